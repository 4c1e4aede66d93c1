"""llm.c token shards and tokenizer files: byte-exact headers, round trips, and bad-input errors."""

import struct

import numpy as np
import pytest

from llmpy.errors import LlmpyError
from llmpy.formats import tokenizer_file, tokens
from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer


@pytest.fixture(scope="module")
def enc():
    return get_gpt2_tokenizer()


def test_uint16_shard_bytes(tmp_path):
    path = tmp_path / "a.bin"
    assert tokens.write_shard(path, [1, 2, 50256], vocab_size=50257) == 3
    raw = path.read_bytes()
    # the header llm.c's data_common.write_datafile writes, built independently with struct
    expected = struct.pack("<256i", 20240520, 1, 3, *([0] * 253)) + struct.pack("<3H", 1, 2, 50256)
    assert raw == expected
    got = tokens.read_shard(path)
    assert got.dtype == np.uint16 and got.tolist() == [1, 2, 50256]
    assert tokens.read_shard(path, mmap=False).tolist() == [1, 2, 50256]
    assert not list(tmp_path.glob("*.tmp"))


def test_uint32_shard_bytes(tmp_path):
    path = tmp_path / "b.bin"
    tokens.write_shard(path, np.array([0, 70000, 128255]), vocab_size=128256)
    expected = struct.pack("<256i", 20240801, 7, 3, *([0] * 253)) + struct.pack("<3I", 0, 70000, 128255)
    assert path.read_bytes() == expected
    assert tokens.read_shard(path).tolist() == [0, 70000, 128255]
    # a big vocabulary forces uint32 even when these ids would fit uint16
    tokens.write_shard(path, [5, 6], vocab_size=100_000)
    assert tokens.read_header(path)[:3] == (20240801, 7, 2)


def test_headerless_formats_only_when_asked(tmp_path):
    path = tmp_path / "raw.bin"
    np.array([3, 1, 4, 1, 5], dtype="<u2").tofile(path)
    assert tokens.read_raw_uint16(path).tolist() == [3, 1, 4, 1, 5]
    with pytest.raises(LlmpyError, match="raw_uint16"):
        tokens.read_shard(path)  # too short for a header: names the flag
    path32 = tmp_path / "raw32.bin"
    np.arange(300, dtype="<i4").tofile(path32)  # 1200 bytes: a header's worth, but the magic is wrong
    assert tokens.read_raw_int32(path32).tolist() == list(range(300))
    with pytest.raises(LlmpyError, match="bad magic"):
        tokens.read_shard(path32)
    with pytest.raises(LlmpyError, match="whole number"):
        (tmp_path / "odd.bin").write_bytes(b"abc")
        tokens.read_raw_uint16(tmp_path / "odd.bin")


def test_bad_shards(tmp_path):
    path = tmp_path / "s.bin"
    tokens.write_shard(path, np.arange(100))
    raw = path.read_bytes()
    (tmp_path / "trunc.bin").write_bytes(raw[:-2])
    with pytest.raises(LlmpyError, match="trunc.bin.*truncated"):
        tokens.read_shard(tmp_path / "trunc.bin")
    bad_version = bytearray(raw)
    bad_version[4:8] = struct.pack("<i", 2)
    (tmp_path / "ver.bin").write_bytes(bytes(bad_version))
    with pytest.raises(LlmpyError, match="bad version 2"):
        tokens.read_shard(tmp_path / "ver.bin")
    with pytest.raises(LlmpyError, match="vocab_size"):
        tokens.write_shard(tmp_path / "v.bin", [1, 50257], vocab_size=50257)
    assert not (tmp_path / "v.bin").exists()
    with pytest.raises(LlmpyError, match="negative"):
        tokens.write_shard(tmp_path / "n.bin", [-1])
    with pytest.raises(LlmpyError, match="unknown token file format"):
        tokens.read_shard(path, fmt="npy")


def test_interrupted_write_leaves_nothing(tmp_path):
    class Boom:
        def __iter__(self):
            yield b"partial"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokens.atomic_write(tmp_path / "x.bin", Boom())
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_file_gpt2(tmp_path, enc):
    path = tmp_path / "gpt2_tokenizer.bin"
    tokenizer_file.write_tokenizer(path, enc)
    raw = path.read_bytes()
    assert raw[:16] == struct.pack("<4i", 20240328, 2, 50257, 50256)
    # token 0 is "!" and token 50256 "<|endoftext|>", each as uint8 length + bytes
    assert raw[1024:1026] == b"\x01!"
    assert raw.endswith(b"\x0d<|endoftext|>")
    tok = tokenizer_file.read_tokenizer(path)
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256)
    text = "The llm.c tokenizer file decodes this: naïve café 日本語 🙂\n<|endoftext|>"
    ids = enc.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    assert all(tok.decode_token(i) == enc.decode_single_token_bytes(i) for i in range(0, 50257, 97))
    # version 1: same table, EOT implied
    tokenizer_file.write_tokenizer(path, enc, version=1)
    assert path.read_bytes()[:16] == struct.pack("<4i", 20240328, 1, 50257, 0)
    assert tokenizer_file.read_tokenizer(path).eot_token == 50256


def test_tokenizer_file_unsafe_pieces(tmp_path, enc):
    path = tmp_path / "t.bin"
    tokenizer_file.write_tokenizer(path, enc)
    tok = tokenizer_file.read_tokenizer(path)
    split_char = enc.encode("🙂")  # one character over several byte-level tokens
    assert len(split_char) > 1
    assert tok.decode(split_char[:1]) == enc.decode(split_char[:1]) == "\ufffd"  # replaced, never raises
    assert tok.decode(split_char) == "🙂"
    ctrl = enc.encode_single_token(b"\x07")
    assert tok.safe_piece(ctrl) == ""
    assert tok.safe_piece(enc.encode_single_token(b"\n")) == "\n"
    assert tok.safe_piece(enc.encode_single_token(b" the")) == " the"
    with pytest.raises(LlmpyError, match="invalid token id 50257"):
        tok.decode([50257])


def test_tokenizer_file_bad(tmp_path, enc):
    path = tmp_path / "t.bin"
    tokenizer_file.write_tokenizer(path, enc)
    raw = path.read_bytes()
    (tmp_path / "short.bin").write_bytes(raw[:-3])
    with pytest.raises(LlmpyError, match="short.bin is truncated"):
        tokenizer_file.read_tokenizer(tmp_path / "short.bin")
    (tmp_path / "magic.bin").write_bytes(struct.pack("<i", 20240520) + raw[4:])
    with pytest.raises(LlmpyError, match="bad magic"):
        tokenizer_file.read_tokenizer(tmp_path / "magic.bin")
    (tmp_path / "ver.bin").write_bytes(raw[:4] + struct.pack("<i", 3) + raw[8:])
    with pytest.raises(LlmpyError, match="bad version 3"):
        tokenizer_file.read_tokenizer(tmp_path / "ver.bin")
