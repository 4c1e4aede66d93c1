"""`llmpy run` end to end on a tiny model + tokenizer: generate, batch, chat through stdin, bad input."""

import io
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from llmpy.cli import main
from llmpy.formats.llama2c import write_llama2c
from llmpy.llama.chat import chat
from llmpy.llama.generate import generate, generate_batch
from llmpy.llama.inference import Transformer
from llmpy.llama.model import EOS, LlamaConfig, random_weights
from llmpy.sampler import Sampler
from llmpy.tokenizers.llama2 import Llama2Tokenizer, safe_piece

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
pytest.importorskip("torch")

import llama_torch


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    vocab, scores = llama_torch.tiny_tokenizer_pieces()
    tok = Llama2Tokenizer(vocab, scores)
    tok.save(d / "tokenizer.bin")
    config = LlamaConfig(32, 64, 2, 4, 2, len(vocab), 96, True)
    weights = random_weights(config, np.random.default_rng(0), scale=0.3)
    write_llama2c(d / "model.bin", config, weights, 0)
    write_llama2c(d / "model_q.bin", config, weights, 2, group_size=32)
    eos_config, eos_weights = eos_model(config, np.random.default_rng(1))
    write_llama2c(d / "eos.bin", eos_config, eos_weights, 1)
    return d, config, weights, tok


def eos_model(config, rng):
    """Weights whose greedy choice is always EOS: a constant residual coordinate that only the EOS row reads."""
    from dataclasses import replace

    config = replace(config, shared_classifier=False)
    w = random_weights(config, rng, scale=0.1)
    w["tok_emb"][:, 0] = 50.0
    w["wo"][:, 0, :] = 0.0  # no branch writes coordinate 0
    w["w2"][:, 0, :] = 0.0
    w["wcls"][:, 0] = 0.0
    w["wcls"][EOS, 0] = 1.0
    return config, w


def run_cli(capsysbinary, *argv):
    code = main(["run", *map(str, argv)])
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def test_generate_greedy_matches_reference(files, capsysbinary):
    d, config, weights, tok = files
    code, out, err = run_cli(capsysbinary, d / "model.bin", "-t", 0, "-n", 20, "-i", "hello world")
    assert code == 0 and "achieved tok/s" in err
    prompt = tok.encode("hello world", bos=True)
    want = llama_torch.greedy(config, weights, prompt, 21)
    printed = b"".join(safe_piece(tok.decode(a, b)) for a, b in itertools.pairwise(want))
    assert want[len(prompt):] and out == printed + b"\n"
    # int8 (v2) runs too and starts with the same prompt text
    code, outq, _ = run_cli(capsysbinary, d / "model_q.bin", "-t", 0, "-n", 20, "-i", "hello world")
    assert code == 0 and outq.startswith(b"hello world")


def test_seed_reproducible_and_batch(files, capsysbinary):
    d = files[0]
    args = [d / "model.bin", "-s", 123, "-n", 30, "-i", "the"]
    _, a, _ = run_cli(capsysbinary, *args)
    _, b, _ = run_cli(capsysbinary, *args)
    _, c, _ = run_cli(capsysbinary, *args[:2], 124, *args[3:])
    assert a == b and a != c
    # batch of 3: stream i uses seed + i, so stream 0 is the single run and stream 1 the seed+1 run
    code, out, _ = run_cli(capsysbinary, *args, "--batch", 3)
    assert code == 0
    streams = out.split(b"--- stream ")[1:]
    assert streams[0] == b"0 ---\n" + a and streams[1] == b"1 ---\n" + c
    # one prompt per stream, greedy: each equals its own single-stream run
    code, out, _ = run_cli(capsysbinary, d / "model.bin", "-t", 0, "-n", 25, "-i", "hello", "-i", "the world")
    singles = [run_cli(capsysbinary, d / "model.bin", "-t", 0, "-n", 25, "-i", p)[1] for p in ("hello", "the world")]
    assert out == b"--- stream 0 ---\n" + singles[0] + b"--- stream 1 ---\n" + singles[1]


def test_chat_two_turns_prompt_tokens(files):
    d, config, _, tok = files
    t = Transformer.from_file(d / "eos.bin")
    config = t.config
    inp = io.StringIO("You are terse.\nhello world\nthe [INST] world\n")
    out = io.BytesIO()
    forwarded = chat(t, tok, Sampler(config.vocab_size, 0.0, 0.9, 1), 0, inp, out)
    turn1 = tok.encode("[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nhello world [/INST]", bos=True)
    turn2 = tok.encode("[INST] the [INST] world [/INST]", bos=True)
    want = turn1 + [EOS] + turn2  # the assistant answers EOS at once; its EOS precedes the next BOS
    assert len(forwarded) == len(want)
    for i, (a, b) in enumerate(zip(forwarded, want)):
        assert a == b, f"token {i}: {tok.vocab[a]!r} != {tok.vocab[b]!r}"
    assert tok.decode_all(turn2[1:]) == b"[INST] the [INST] world [/INST]"
    assert out.getvalue().count(b"Assistant: ") == 2 and out.getvalue().startswith(b"Enter system prompt")


def test_chat_context_full_is_a_message(files):
    _d, config, weights, tok = files
    t = Transformer(config, weights)
    out = io.BytesIO()
    long_turn = "hello world " * 60
    forwarded = chat(t, tok, Sampler(config.vocab_size, 1.0, 0.9, 5), 0, io.StringIO(long_turn + "\n"), out,
                     system_prompt="")
    assert forwarded == [] and b"context full" in out.getvalue()


def test_chat_cli_through_stdin(files, capsysbinary, monkeypatch):
    d = files[0]
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nthe world\n"))
    code, out, _ = run_cli(capsysbinary, d / "eos.bin", "-m", "chat", "-y", "be brief", "-n", 0, "-t", 0)
    assert code == 0 and out == b"User: Assistant: \nUser: Assistant: \nUser: \n"
    # a model that does not stop: the context fills up with a message, not a crash
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    code, out, _ = run_cli(capsysbinary, d / "model.bin", "-m", "chat", "-y", "", "-n", 40, "-t", 0)
    assert code == 0 and out.startswith(b"User: Assistant: ") and b"[context full" in out


@pytest.mark.parametrize("argv,message", [
    (["-t", "-1"], "temperature must be >= 0"),
    (["-p", "1.5"], "top-p must be in"),
    (["-n", "-3"], "steps"),
    (["-s", "-1"], "seed"),
    (["--batch", "0"], "--batch"),
    (["-i", "hello world " * 100], "shorten the prompt"),
    (["-m", "chat", "--batch", "2"], "chat mode"),
])
def test_bad_flags(files, capsysbinary, argv, message):
    d = files[0]
    code, _out, err = run_cli(capsysbinary, d / "model.bin", *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_files(files, tmp_path, capsysbinary):
    d, _config, _weights, tok = files
    Llama2Tokenizer(tok.vocab[:-1], tok.scores[:-1]).save(tmp_path / "small.bin")
    code, _, err = run_cli(capsysbinary, d / "model.bin", "-z", tmp_path / "small.bin")
    assert code == 2 and "vocab_size" in err
    (tmp_path / "cut.bin").write_bytes((d / "model.bin").read_bytes()[:-100])
    code, _, err = run_cli(capsysbinary, tmp_path / "cut.bin", "-z", d / "tokenizer.bin")
    assert code == 2 and "truncated" in err
    code, _, err = run_cli(capsysbinary, tmp_path / "missing.bin")
    assert code == 2 and "cannot read model file" in err


# -----------------------------------------------------------------------------
# past the context: stop with a notice, or --context-shift

SHIFT_LEN = 32


@pytest.fixture(scope="module")
def short(files):
    """A model with a 32-token context (and the tiny tokenizer), written to model32.bin."""
    d, _config, _weights, tok = files
    config = LlamaConfig(32, 64, 2, 4, 2, len(tok.vocab), SHIFT_LEN, True)
    weights = random_weights(config, np.random.default_rng(7), scale=0.3)
    write_llama2c(d / "model32.bin", config, weights, 0)
    return d / "model32.bin", config, weights, tok


def shifted_reference(config, weights, prompt, total, keep):
    """Greedy tokens (prompt included, `total` in all unless BOS comes) where each step runs a fresh Transformer
    over the whole window: the first `keep` tokens and, once the window would pass seq_len, the most recent half
    of the others."""
    window, seq = list(prompt), list(prompt)
    recent = (config.seq_len - keep) // 2
    while len(seq) < total:
        if len(window) > config.seq_len:
            window = window[:keep] + window[len(window) - recent:]
        nxt = int(np.argmax(Transformer(config, weights).prefill(window)[0]))
        if nxt == 1:  # BOS: the loop's stop
            break
        seq.append(nxt)
        window.append(nxt)
    return seq


@pytest.mark.parametrize("prompt", ["hello world", "the world " * 9])  # keep: the prompt, or half the window
def test_context_shift_equals_recomputing_the_window(short, prompt):
    path, config, weights, tok = short
    t = Transformer.from_file(path)
    err = io.StringIO()
    got = generate(t, tok, Sampler(config.vocab_size, 0.0, 0.9, 1), prompt, 80, context_shift=True, err=err)
    tokens = tok.encode(prompt, bos=True)
    want = shifted_reference(config, weights, tokens, 81, min(len(tokens), SHIFT_LEN // 2))
    assert len(want) == 81 and got.tokens == want and err.getvalue() == ""
    # without the flag: the same tokens up to the end of the window, then the notice
    stopped = generate(Transformer.from_file(path), tok, Sampler(config.vocab_size, 0.0, 0.9, 1), prompt, 80,
                       err=err)
    assert stopped.tokens == want[:SHIFT_LEN + 1] and "[context full" in err.getvalue()
    # batched: each stream shifts by itself and equals its single run
    samplers = [Sampler(config.vocab_size, 0.0, 0.9, 1) for _ in range(2)]
    both = generate_batch(Transformer.from_file(path, n_streams=2), tok, samplers, [prompt, "hello"], 80,
                          context_shift=True)
    alone = generate(Transformer.from_file(path), tok, Sampler(config.vocab_size, 0.0, 0.9, 1), "hello", 80,
                     context_shift=True)
    assert both[0].tokens == want and both[1].tokens == alone.tokens


def test_context_shift_cli(short, capsysbinary):
    path = short[0]
    code, out, err = run_cli(capsysbinary, path, "-t", 0, "-n", 80, "-i", "hello world")
    _, out32, _ = run_cli(capsysbinary, path, "-t", 0, "-n", 32, "-i", "hello world")
    assert code == 0 and "[context full" in err and "--context-shift" in err and out == out32
    code, longer, err = run_cli(capsysbinary, path, "-t", 0, "-n", 80, "-i", "hello world", "--context-shift")
    assert code == 0 and "[context full" not in err and longer.startswith(out32[:-1]) and len(longer) > len(out32)


class EosAfter:
    """Greedy sampling that answers EOS after n tokens (a chat model that stops late)."""

    def __init__(self, n):
        self.n = n

    def sample(self, logits):
        self.n -= 1
        return EOS if self.n < 0 else int(np.argmax(logits))


def test_chat_context_shift(short):
    path, config, weights, tok = short
    turn1 = tok.encode("[INST] hi [/INST]", bos=True)
    keep = len(turn1)
    out = io.BytesIO()
    cache = chat(Transformer.from_file(path), tok, EosAfter(50), 0, io.StringIO("hi\nthe\n"), out, system_prompt="",
                 context_shift=True)
    # the first answer: 50 tokens past a 32-token window, as the reference recomputes them
    answer = shifted_reference(config, weights, turn1, len(turn1) + 50, keep)[len(turn1):]
    printed = b"".join(safe_piece(tok.decode(a, b)) for a, b in itertools.pairwise([turn1[-1], *answer]))
    assert out.getvalue().startswith(b"User: Assistant: " + printed + b"\nUser: Assistant: ")
    # the second turn went after a shifted window: the first turn, then recent tokens, then EOS + turn 2 + answer
    turn2 = tok.encode("[INST] the [/INST]", bos=True)
    assert cache[:keep] == turn1 and len(cache) < SHIFT_LEN and cache.count(EOS) >= 1
    at = len(cache) - 1 - cache[::-1].index(EOS)
    assert cache[at + 1:at + 1 + len(turn2)] == turn2
    # without the flag the first answer hits the end of the window
    out = io.BytesIO()
    chat(Transformer.from_file(path), tok, EosAfter(50), 0, io.StringIO("hi\n"), out, system_prompt="")
    assert b"[context full" in out.getvalue()


def test_quantize_and_dtype_on_a_llama2c_file(files, capsysbinary):
    d, config, _weights, tok = files
    args = ["-t", 0, "-n", 30, "-i", "hello world"]
    code, q8, _ = run_cli(capsysbinary, d / "model.bin", "--quantize", "q8", *args)
    _, v2, _ = run_cli(capsysbinary, d / "model_q.bin", *args)  # llama2.c's v2 export, groups of 32 (64 halved)
    assert code == 0 and q8 == v2
    code, b16, _ = run_cli(capsysbinary, d / "model.bin", "--dtype", "bf16", *args)
    want = generate(Transformer.from_file(d / "model.bin", dtype="bf16"), tok, Sampler(config.vocab_size, 0.0, 0.9, 1),
                    "hello world", 30)
    assert code == 0 and b16 == want.text + b"\n"
    code, _, err = run_cli(capsysbinary, d / "model_q.bin", "--quantize", "q8", *args)
    assert code == 2 and "already" in err and "Traceback" not in err
