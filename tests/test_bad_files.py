"""Every reader rejects what it cannot use with an LlmpyError that says what to do: non-finite weights,
headers that would make the program allocate out of proportion to the file, malformed safetensors and
config.json, bad eval examples, directories, token ids beyond int32, a tokenizer too small for its byte
fallback; and a file of another kind is named (llmpy.formats.sniff) with the command that takes it."""

import json
import struct
import sys

import numpy as np
import pytest

from llmpy.cli import main
from llmpy.errors import LlmpyError
from llmpy.formats import finite, hellaswag, llama2c, llama_debug, llmc, safetensors, sniff, tokenizer_file, tokens
from llmpy.gpt2 import hf
from llmpy.gpt2.model import GPT2Config, init_params, num_parameters
from llmpy.llama.inference import Transformer
from llmpy.llama.model import LlamaConfig, random_weights
from llmpy.llama.train_model import num_parameters as llama_num_parameters
from llmpy.tokenizers.llama2 import Llama2Tokenizer

GPT = GPT2Config(max_seq_len=16, vocab_size=70, padded_vocab_size=128, num_layers=2, num_heads=4, channels=32)
LLAMA = LlamaConfig(32, 64, 2, 4, 2, 40, 16, True)


def gpt_params(seed=0):
    return init_params(GPT, np.random.default_rng(seed))


class ByteVocab:
    """A tokenizer object write_tokenizer accepts: token i is the single byte i, and one EOT token."""
    n_vocab = 257
    eot_token = 256

    def decode_single_token_bytes(self, i):
        return bytes([i]) if i < 256 else b"<|endoftext|>"


def llama2c_tokenizer(n_bytes=256):
    """<unk>, <s>, </s>, then the byte-fallback tokens <0x00>.. (n_bytes of them), then ' ' and 'a'."""
    vocab = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(n_bytes)] + [b" ", b"a"]
    return Llama2Tokenizer(vocab, [0.0] * len(vocab))


def write_debug_state(path, config, B=1, T=4, rng=None):
    """llm.c's debug state layout (formats/llmc.py docstring), values from rng."""
    rng = rng or np.random.default_rng(0)
    x = rng.integers(0, config.vocab_size, (B, T)).astype("<i4")
    y = rng.integers(0, config.vocab_size, (B, T)).astype("<i4")
    logits = rng.standard_normal((B, T, config.vocab_size)).astype("<f4")
    loss = np.array([4.2], "<f4")
    grads = rng.standard_normal(num_parameters(config)).astype("<f4")
    header = np.zeros(256, "<i4")
    header[:4] = [llmc.STATE_MAGIC, llmc.STATE_VERSION, B, T]
    path.write_bytes(b"".join(a.tobytes() for a in (header, x, y, logits, loss, grads)))
    return path


# ----------------------------------------------------------------------------
# non-finite weights

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_llmc_checkpoint_nonfinite(tmp_path, dtype, bad):
    params = gpt_params()
    i = 128 * 32 + 16 * 32 + 5  # inside ln1w, after wte and wpe
    params[i] = bad
    path = tmp_path / "m.bin"
    llmc.save_checkpoint(path, GPT, params, dtype)
    with pytest.raises(LlmpyError, match=r"tensor ln1w holds a non-finite value .* index \(0, 5\)") as e:
        llmc.load_checkpoint(path)
    assert str(path) in str(e.value) and "allow_nonfinite=True" in str(e.value)
    with pytest.warns(RuntimeWarning, match="ln1w"):
        _, got = llmc.load_checkpoint(path, allow_nonfinite=True)
    assert np.isnan(got[i]) if np.isnan(bad) else got[i] == bad


def test_first_nonfinite_locates_across_chunks():
    a = np.ones(3 * finite.CHUNK + 7, np.float32)
    assert finite.first_nonfinite(a) is None
    a[2 * finite.CHUNK + 3] = np.inf
    a[-1] = np.nan
    assert finite.first_nonfinite(a) == 2 * finite.CHUNK + 3
    big = np.full(finite.CHUNK, 3e38, np.float32)  # finite values whose sum overflows: still finite
    assert finite.first_nonfinite(big) is None


def test_debug_state_nonfinite(tmp_path):
    path = write_debug_state(tmp_path / "state.bin", GPT)
    state = llmc.load_debug_state(path, GPT)
    assert state.logits.shape == (1, 4, 70) and np.isfinite(state.grads).all()
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, len(raw) - 8, np.nan)  # the second-last gradient
    path.write_bytes(bytes(raw))
    with pytest.raises(LlmpyError, match="tensor grads holds a non-finite value"):
        llmc.load_debug_state(path, GPT)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # quantizing the NaN (v2)
@pytest.mark.parametrize("version", [0, 1, 2])
def test_llama2c_nonfinite(tmp_path, version):
    weights = random_weights(LLAMA, np.random.default_rng(0))
    weights["w2"][1, 3, 7] = np.nan
    path = tmp_path / "m.bin"
    llama2c.write_llama2c(path, LLAMA, weights, version, group_size=16)
    where = "w2[1].scales" if version == 2 else "w2"  # int8 files: the scale of that group is NaN
    with pytest.raises(LlmpyError, match=rf"tensor {where.replace('[', '.').replace(']', '.')} holds a non-finite"):
        llama2c.read_llama2c(path)
    with pytest.raises(LlmpyError, match="non-finite"):
        Transformer.from_file(path)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        t = Transformer.from_file(path, allow_nonfinite=True)
    assert t.config == LLAMA


def test_hf_dir_nonfinite(tmp_path):
    params = gpt_params()
    params[-1] = np.inf  # lnfb
    hf.export_hf(tmp_path, GPT, params)
    with pytest.raises(LlmpyError, match="tensor lnfb holds a non-finite value"):
        hf.load_hf_dir(tmp_path)


# ----------------------------------------------------------------------------
# sizes a header makes the program allocate

def test_llama2c_seq_len_bounded(tmp_path):
    weights = random_weights(LLAMA, np.random.default_rng(1))
    path = tmp_path / "m.bin"
    llama2c.write_llama2c(path, LLAMA, weights, 1)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<i", raw, 8 + 6 * 4, 16 | 1 << 26)  # seq_len with one bit flipped: 67M positions
    path.write_bytes(bytes(raw))
    with pytest.raises(LlmpyError, match=r"seq_len 67,108,880 needs .* GiB of KV cache.*max_seq_len=N") as e:
        Transformer.from_file(path)
    assert "--context" in str(e.value)
    # a caller who chooses the context gets exactly that many positions allocated
    t = Transformer.from_file(path, max_seq_len=8)
    assert t.config.seq_len == 8 and t.key_cache.shape[3] == 8 and t.cos.shape == (8, 4)
    # the bound: refused just above CONTEXT_LIMIT_WEIGHTS times the weights (once past the 1 GiB floor)
    config = LlamaConfig(32, 64, 2, 4, 2, 40, 1, True)
    weight_bytes = 10**9
    per_position = llama2c.context_bytes(config, 1)
    fits = llama2c.CONTEXT_LIMIT_WEIGHTS * weight_bytes // per_position
    llama2c.check_context("x", LlamaConfig(32, 64, 2, 4, 2, 40, fits, True), weight_bytes)
    with pytest.raises(LlmpyError, match="probably corrupt"):
        llama2c.check_context("x", LlamaConfig(32, 64, 2, 4, 2, 40, fits + 1, True), weight_bytes)
    with pytest.raises(LlmpyError, match="must be >= 1"):
        Transformer.from_file(path, max_seq_len=0)


@pytest.mark.parametrize("field,value", [(0, 32 * 1000), (2, 2000), (5, 40000), (1, 64 * 1000)])
def test_llama2c_dims_checked_against_file_size(tmp_path, field, value):
    # dim, n_layers, vocab_size, hidden_dim: each drives an allocation; the file size must agree with them
    weights = random_weights(LLAMA, np.random.default_rng(1))
    path = tmp_path / "m.bin"
    llama2c.write_llama2c(path, LLAMA, weights, 2, group_size=16)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<i", raw, 8 + 4 * field, value)
    path.write_bytes(bytes(raw))
    with pytest.raises(LlmpyError, match="truncated or not a llama2.c v2 model|group size"):
        Transformer.from_file(path)


# ----------------------------------------------------------------------------
# safetensors and Hugging Face config.json

def _safetensors_with(tmp_path, name, entry=None, header=None):
    """A safetensors file whose header is {"t": entry}, or `header` (bytes or a dict), then 64 zero bytes."""
    header = {"t": entry} if header is None else header
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(64))
    return path


@pytest.mark.parametrize("name,entry,message", [
    ("negative_dim", {"dtype": "F32", "shape": [-4, -4], "data_offsets": [0, 64]}, "malformed entry"),
    ("overflow", {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 0]}, "do not match its size"),
    ("overflow_int64", {"dtype": "U8", "shape": [2**32, 2**32], "data_offsets": [0, 0]}, "do not match"),
    ("float_offset", {"dtype": "F32", "shape": [4], "data_offsets": [0, 16.0]}, "malformed entry"),
    ("bool_offset", {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}, "malformed entry"),
    ("three_offsets", {"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 32]}, "malformed entry"),
    ("float_dim", {"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}, "malformed entry"),
    ("list_dtype", {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}, "malformed entry"),
    ("unknown_dtype", {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}, "does not handle"),
    ("past_end", {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}, "64-byte data section"),
    ("not_object", [1, 2], "malformed entry"),
])
def test_safetensors_bad_entries(tmp_path, name, entry, message):
    path = _safetensors_with(tmp_path, name, entry)
    with pytest.raises(LlmpyError, match=message):
        safetensors.read_safetensors(path)


def test_safetensors_bad_headers(tmp_path):
    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(LlmpyError, match="nested too deeply"):
        safetensors.read_safetensors(_safetensors_with(tmp_path, "nested", header=nested))
    with pytest.raises(LlmpyError, match="not a JSON object"):
        safetensors.read_safetensors(_safetensors_with(tmp_path, "list", header=b"[1]"))
    with pytest.raises(LlmpyError, match="__metadata__"):
        safetensors.read_safetensors(_safetensors_with(tmp_path, "meta", header={"__metadata__": {"a": 1}}))
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**63 + 5) + b"{}")
    with pytest.raises(LlmpyError, match="does not fit"):
        safetensors.read_safetensors(huge)


@pytest.mark.parametrize("content,message", [
    ("", "not JSON"), ("[4]", "JSON list, not an object"), ('{"n_head": "4"}', "n_head is '4'"),
    ('{"n_head": true}', "n_head is 'True'"), ('{"n_head": 0}', "not a positive integer"),
    ('{"n_head": 3}', "do not describe a GPT-2"), ('{"n_head": 4, "n_embd": 64}', "n_embd=64 but .* holds 32"),
    ("[" * 100_000, "nested too deeply|not JSON"), ('{"n_layer": 2.5}', "n_layer is '2.5'"),
])
def test_hf_config_json(tmp_path, content, message):
    hf.export_hf(tmp_path, GPT, gpt_params())
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(LlmpyError, match=message):
        hf.load_hf_dir(tmp_path)


# ----------------------------------------------------------------------------
# eval files, token shards, tokenizers

EXAMPLE = {"label": 1, "ctx_tokens": [5, 6], "ending_tokens": [[1], [2, 3], [4], [7, 8, 9]]}


def _evalfile_bytes(tmp_path):
    path = tmp_path / "ok.bin"
    hellaswag.write_evalfile(path, [EXAMPLE, EXAMPLE])
    return bytearray(path.read_bytes())


def test_evalfile_bad_examples(tmp_path):
    raw = _evalfile_bytes(tmp_path)
    cases = {}
    bad = raw.copy()
    struct.pack_into("<H", bad, 1024 + 6, 4)  # example 0's label
    cases["label 4"] = (bytes(bad), "label 4")
    bad = raw.copy()
    struct.pack_into("<i", bad, 8, 0)
    cases["zero"] = (bytes(bad), "holds 1..65535")
    bad = raw.copy()
    struct.pack_into("<i", bad, 8, -3)
    cases["negative"] = (bytes(bad), "holds 1..65535")
    for name, (data, message) in cases.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(data)
        with pytest.raises(LlmpyError, match=message):
            hellaswag.read_evalfile(p)
    # an empty context, written by hand (write_evalfile refuses it): [start, nbytes, index, label, 4, 0, ...]
    stream = [65535, 0, 0, 1, 4, 0, 1, 1, 1, 2, 1, 4, 1, 7]
    stream[1] = 2 * len(stream)
    header = struct.pack("<256i", hellaswag.EVAL_MAGIC, 1, 1, 2 * len(stream), *[0] * 252)
    (tmp_path / "empty.bin").write_bytes(header + struct.pack(f"<{len(stream)}H", *stream))
    with pytest.raises(LlmpyError, match="empty context or ending"):
        hellaswag.read_evalfile(tmp_path / "empty.bin")
    ok = tmp_path / "ok.bin"
    assert len(hellaswag.read_evalfile(ok, vocab_size=10)) == 2
    with pytest.raises(LlmpyError, match="token id 9, outside the model's vocabulary of 9"):
        hellaswag.read_evalfile(ok, vocab_size=9)


def test_evaluate_refuses_another_vocab(tmp_path):
    from llmpy.data.hellaswag import evaluate

    path = tmp_path / "hs.bin"
    hellaswag.write_evalfile(path, [EXAMPLE])
    with pytest.raises(LlmpyError, match="outside the model's vocabulary of 8"):
        evaluate(str(path), 4, 8, losses_fn=lambda x, y: np.zeros(x.shape, np.float32), vocab_size=8)


@pytest.mark.parametrize("mmap", [True, False])
def test_uint32_shard_ids_beyond_int32(tmp_path, mmap):
    path = tmp_path / "s.bin"
    tokens.write_shard(path, [0, 2**31 - 1, 70000])
    assert tokens.read_shard(path, mmap=mmap).max() == 2**31 - 1
    tokens.write_shard(path, [0, 2**31, 70000])
    with pytest.raises(LlmpyError, match="token id 2,147,483,648"):
        tokens.read_shard(path, mmap=mmap)


def test_shard_reader_survives_truncation(tmp_path):
    path = tmp_path / "s.bin"
    ids = np.arange(1000) * 7 % 50257
    tokens.write_shard(path, ids)
    reader = tokens.ShardReader(path)
    assert len(reader) == 1000 and reader[10:20].tolist() == ids[10:20].tolist() and reader[990:2000].size == 10
    tokens.write_shard(path, ids[::-1])  # replaced atomically: the open reader still reads the old file
    assert reader[0:5].tolist() == ids[:5].tolist()
    reader = tokens.ShardReader(path)
    with open(path, "r+b") as f:  # truncated in place under the reader: an error, not SIGBUS
        f.truncate(1024 + 2 * 500)
    assert reader[0:500].tolist() == ids[::-1][:500].tolist()
    with pytest.raises(LlmpyError, match="shorter than when it was opened"):
        reader[400:600]
    tokens.write_shard(path, [1, 2**31, 3])
    reader = tokens.ShardReader(path)
    assert reader[0:1].tolist() == [1]
    with pytest.raises(LlmpyError, match="token id 2,147,483,648 at position 1,"):
        reader[0:3]
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(6, dtype="<u2").tobytes())
    assert tokens.ShardReader(raw, fmt="raw_uint16")[2:4].tolist() == [2, 3]


def test_llama2_tokenizer_byte_fallback_outside_vocab(tmp_path):
    path = tmp_path / "tok.bin"
    small = llama2c_tokenizer(n_bytes=100)  # <0x00>..<0x63>: 'é' (0xC3 0xA9) has no byte token
    small.save(path)
    tok = Llama2Tokenizer.load(path, small.vocab_size)
    assert tok.encode("a", bos=False) == [103, 104]  # ' ' and 'a'
    with pytest.raises(LlmpyError, match="byte 0xC3 of the text has no token"):
        tok.encode("é")


# ----------------------------------------------------------------------------
# directories and files of another kind

def _files(tmp_path):
    """One file of every kind, written by the project's own writers."""
    d = tmp_path / "kinds"
    d.mkdir()
    paths = {}
    paths["llmc_model"] = d / "gpt2.bin"
    llmc.save_checkpoint(paths["llmc_model"], GPT, gpt_params())
    paths["llmc_state"] = write_debug_state(d / "state.bin", GPT)
    rng = np.random.default_rng(1)
    paths["llama_state"] = d / "llama_state.bin"
    llama_debug.save_llama_debug_state(paths["llama_state"], LLAMA, np.zeros((1, 4), int), np.ones((1, 4), int),
                                       rng.standard_normal((1, 4, LLAMA.vocab_size)), 1.5,
                                       rng.standard_normal(llama_num_parameters(LLAMA)), [1.5])
    paths["llmc_tokenizer"] = d / "gpt2_tokenizer.bin"
    tokenizer_file.write_tokenizer(paths["llmc_tokenizer"], ByteVocab())
    paths["shard"] = d / "shard.bin"
    tokens.write_shard(paths["shard"], np.arange(100))
    paths["evalfile"] = d / "hellaswag.bin"
    hellaswag.write_evalfile(paths["evalfile"], [EXAMPLE])
    weights = random_weights(LLAMA, np.random.default_rng(0))
    for v in (0, 1, 2):
        paths[f"llama2c_v{v}"] = d / f"llama_v{v}.bin"
        llama2c.write_llama2c(paths[f"llama2c_v{v}"], LLAMA, weights, v, group_size=16)
    paths["llama2c_tokenizer"] = d / "tokenizer.bin"
    llama2c_tokenizer().save(paths["llama2c_tokenizer"])
    paths["safetensors"] = safetensors.write_safetensors(d / "model.safetensors", {"a": np.ones(3, np.float32)})
    paths["npz"] = d / "state.npz"
    with open(paths["npz"], "wb") as f:
        np.savez(f, step=np.int64(3))
    return paths


def test_sniff_names_every_kind(tmp_path):
    for key, path in _files(tmp_path).items():
        kind = sniff.identify_path(path)
        assert kind is not None and kind.key == key.split("_v")[0], (key, kind)
    assert sniff.identify_path(tmp_path).key == "directory"
    (tmp_path / "text.txt").write_text("hello, world\n" * 10)
    assert sniff.describe(tmp_path / "text.txt") is None
    assert sniff.describe(tmp_path / "missing") is None


# (reader, what a wrong file is called in its message) for every reader
READERS = {
    "load_checkpoint": (llmc.load_checkpoint, "llmc_model"),
    "load_debug_state": (lambda p: llmc.load_debug_state(p, GPT), "llmc_state"),
    "load_llama_debug_state": (lambda p: llama_debug.load_llama_debug_state(p, LLAMA, llama_num_parameters(LLAMA)),
                               "llama_state"),
    "read_tokenizer": (tokenizer_file.read_tokenizer, "llmc_tokenizer"),
    "read_shard": (tokens.read_shard, "shard"),
    "read_evalfile": (hellaswag.read_evalfile, "evalfile"),
    "read_llama2c": (llama2c.read_llama2c, "llama2c"),
    "Transformer.from_file": (Transformer.from_file, "llama2c"),
    "Llama2Tokenizer.load": (lambda p: Llama2Tokenizer.load(p, 261), "llama2c_tokenizer"),
    "read_safetensors": (safetensors.read_safetensors, "safetensors"),
    "load_hf_dir": (hf.load_hf_dir, "safetensors"),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_names_the_other_kinds(tmp_path, reader):
    read, own = READERS[reader]
    files = _files(tmp_path)
    for key, path in files.items():
        if key.split("_v")[0] == own:
            if reader == "load_hf_dir":  # a safetensors file, but no GPT-2 in it
                with pytest.raises(LlmpyError, match="not a Hugging Face GPT-2 model"):
                    read(path)
            else:
                read(path)  # its own kind loads
            continue
        kind = sniff.KINDS[key.split("_v")[0]]
        with pytest.raises(LlmpyError) as e:
            read(path)
        if reader != "load_hf_dir":  # that one first looks for a model.safetensors
            assert f"{path} is {kind.what}, not " in str(e.value) and kind.use in str(e.value), (key, str(e.value))
    with pytest.raises(LlmpyError, match="is a directory|not found"):
        read(tmp_path / "kinds" / "sub") if reader == "load_hf_dir" else read(tmp_path)


def test_messages_for_the_common_mixups(tmp_path):
    files = _files(tmp_path)
    with pytest.raises(LlmpyError, match=r"is an llm.c GPT-2 checkpoint, not a llama2.c model: `llmpy sample`"):
        Transformer.from_file(files["llmc_model"])
    with pytest.raises(LlmpyError, match=r"is a llama2.c model, not a llama2.c tokenizer.bin .*`llmpy run`"):
        Llama2Tokenizer.load(files["llama2c_v0"], 261)
    with pytest.raises(LlmpyError, match=r"is an llm.c GPT-2 tokenizer file .* needs llama2.c's tokenizer.bin"):
        Llama2Tokenizer.load(files["llmc_tokenizer"], 261)
    with pytest.raises(LlmpyError, match=r"is a llama2.c model, not an llm.c model checkpoint"):
        llmc.load_checkpoint(files["llama2c_v1"])


def test_raw_token_file_directory(tmp_path):
    with pytest.raises(LlmpyError, match="is a directory"):
        tokens.read_raw_uint16(tmp_path)


def test_cli_test_gpt2_model_directory(tmp_path, capsys):
    state = write_debug_state(tmp_path / "state.bin", GPT)
    assert main(["test-gpt2", "--model", str(tmp_path), "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is a directory, not an llm.c model checkpoint" in err and "Traceback" not in err


def test_cli_test_gpt2_given_a_llama_state(tmp_path, capsys):
    files = _files(tmp_path)
    assert main(["test-gpt2", "--model", str(files["llmc_model"]), "--state", str(files["llama_state"])]) == 2
    err = capsys.readouterr().err
    assert f"{files['llama_state']} is a Llama debug state" in err and "`llmpy test-llama --state`" in err, err


def test_transformer_keeps_no_mapping(tmp_path):
    # item 7: after loading, the model file can be truncated in place without touching the Transformer
    path = tmp_path / "m.bin"
    config = LlamaConfig(32, 64, 2, 4, 2, 40, 16, False)
    llama2c.write_llama2c(path, config, random_weights(config, np.random.default_rng(5)), 1)
    t = Transformer.from_file(path)
    for name, value in vars(t).items():
        arrays = [value.q, value.s] if hasattr(value, "q") else [value]
        for a in arrays:
            while isinstance(a, np.ndarray):
                assert not isinstance(a, np.memmap), name
                a = a.base
    with open(path, "r+b") as f:
        f.truncate(0)
    np.testing.assert_array_equal(t.tok_emb[3], random_weights(config, np.random.default_rng(5))["tok_emb"][3])


def test_a_missing_optional_package_says_how_to_install_it(monkeypatch):
    from llmpy.cli.plot import plot_runs
    from llmpy.tokenizers.bpe_train import SentencePieceTokenizer

    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # `import sentencepiece` then raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(LlmpyError, match=r"^a custom vocabulary needs the sentencepiece package: pip install "
                                         r"sentencepiece \(or pip install 'llmpy\[vocab\]'\)$"):
        SentencePieceTokenizer("tok.model")
    with pytest.raises(LlmpyError, match=r"^plotting needs the matplotlib package: .*'llmpy\[plot\]'"):
        plot_runs(["run"], "loss.png")
