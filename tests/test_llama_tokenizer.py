"""llama2.c tokenizer.bin: a tiny vocabulary built here, run.c's encode/decode rules."""

import sys
from pathlib import Path

import pytest

from llmpy.errors import LlmpyError
from llmpy.tokenizers.llama2 import BOS, EOS, Llama2Tokenizer, safe_piece

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
pytest.importorskip("torch")
import llama_torch


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    vocab, scores = llama_torch.tiny_tokenizer_pieces()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.bin"
    Llama2Tokenizer(vocab, scores).save(path)
    return Llama2Tokenizer.load(path, len(vocab))


def ids(tok, *pieces):
    return [tok.ids[p.encode()] for p in pieces]


def test_file_roundtrip(tok):
    vocab, scores = llama_torch.tiny_tokenizer_pieces()
    assert tok.vocab == vocab
    assert tok.scores == pytest.approx(scores)
    assert tok.max_token_length == max(len(v) for v in vocab)


def test_encode_merges_by_score(tok):
    # " hello world": dummy prefix " ", then " hello" and " world" win as the highest-scoring merges
    assert tok.encode("hello world", bos=True, eos=True) == [BOS] + ids(tok, " hello", " world") + [EOS]
    assert tok.encode("hello", bos=False) == ids(tok, " hello")
    assert tok.encode("", bos=True) == [BOS]  # no dummy prefix for empty text


def test_scores_decide_merges(tmp_path):
    # "abc" with pieces "ab" and "bc": the higher-scoring pair is merged first, and that decides the split
    base = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)] + [b" ", b"a", b"b", b"c"]
    for ab, bc, want in [(-1.0, -2.0, [b" ", b"ab", b"c"]), (-2.0, -1.0, [b" ", b"a", b"bc"])]:
        vocab = base + [b"ab", b"bc"]
        scores = [0.0] * len(base) + [ab, bc]
        t = Llama2Tokenizer(vocab, scores)
        assert [t.vocab[i] for i in t.encode("abc", bos=False)] == want
    # equal scores: the leftmost pair wins, like run.c's strict '>' scan
    t = Llama2Tokenizer(base + [b"ab", b"bc"], [0.0] * len(base) + [-1.0, -1.0])
    assert [t.vocab[i] for i in t.encode("abc", bos=False)] == [b" ", b"ab", b"c"]


def test_byte_fallback_and_utf8(tok):
    # "\u00e9" is in the vocabulary; U+00FC is not and becomes its two UTF-8 bytes as <0xXX> tokens (byte + 3)
    assert tok.encode("\u00e9", bos=False) == ids(tok, " ", "\u00e9")
    assert tok.encode("\u00fc", bos=False) == ids(tok, " ") + [0xC3 + 3, 0xBC + 3]
    assert tok.encode("\u4e16", bos=False) == ids(tok, " ", "\u4e16")  # a 3-byte code point in the vocab
    assert tok.decode(5, 0xC3 + 3) == b"\xc3"  # <0xC3> decodes to the raw byte


@pytest.mark.parametrize("text", ["hello world", "the [INST] hello", "tabs\tand\nnewlines",
                                  "caf\u00e9 \u00fcber \u4e16", "emoji \U0001F600!"])
def test_roundtrip(tok, text):
    tokens = tok.encode(text, bos=True)
    assert tok.decode_all(tokens[1:], prev_token=tokens[0]).decode("utf-8") == text  # leading space stripped after BOS


def test_decode_strips_space_only_after_bos(tok):
    (hello,) = ids(tok, " hello")
    assert tok.decode(BOS, hello) == b"hello"
    assert tok.decode(hello, hello) == b" hello"


def test_safe_piece():
    assert safe_piece(b"\x07") == b""  # a control byte is not printed
    assert safe_piece(b"\xc3") == b""  # neither is a lone UTF-8 byte (C isprint is ASCII only)
    assert safe_piece(b"\n") == b"\n" and safe_piece(b"a") == b"a" and safe_piece(b"ab\x07") == b"ab\x07"


def test_vocab_mismatch_errors(tmp_path, tok):
    path = tmp_path / "t.bin"
    tok.save(path)
    with pytest.raises(LlmpyError, match="has only .* tokens but the model's vocab_size is"):
        Llama2Tokenizer.load(path, tok.vocab_size + 10)
    with pytest.raises(LlmpyError, match="has more than .* tokens"):
        Llama2Tokenizer.load(path, tok.vocab_size - 10)
    with pytest.raises(LlmpyError, match="cannot read tokenizer"):
        Llama2Tokenizer.load(tmp_path / "missing.bin", 10)
