"""The command line's conventions: long flags everywhere, the subcommand's usage for an unknown flag, one-line
errors (exit 2, no traceback) for unwritable outputs and -n beyond the context, a quiet exit on a closed pipe,
and export's v2 group size lowered to fit the model."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_tiny_llama

from llmpy.cli import EXIT_SIGPIPE, main
from llmpy.formats.llama2c import read_llama2c, write_llama2c
from llmpy.formats.llmc import save_checkpoint
from llmpy.gpt2.model import GPT2Config, init_params
from llmpy.llama.model import LlamaConfig, random_weights
from llmpy.llama.quant import dequantize

GPT2_CFG = GPT2Config(max_seq_len=64, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=2,
                      channels=16)
SEQ_LEN = 48


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny llama2.c model (seq_len 48) and its tokenizer.bin side by side."""
    d = tmp_path_factory.mktemp("cli_llama")
    write_tiny_llama(d, SEQ_LEN, seed=3)
    return d


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_gpt2") / "model.bin"
    save_checkpoint(path, GPT2_CFG, init_params(GPT2_CFG, np.random.default_rng(0)) * 4.0)
    return path


def _main(capsysbinary, *argv):
    code = main([str(a) for a in argv])
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def test_run_long_flags_equal_short_flags(llama, capsysbinary):
    model, tok = llama / "model.bin", llama / "tokenizer.bin"
    short = _main(capsysbinary, "run", model, "-t", 0.7, "-p", 0.8, "-s", 5, "-n", 20, "-i", "hello", "-z", tok)
    long = _main(capsysbinary, "run", model, "--temperature", 0.7, "--top-p", 0.8, "--seed", 5, "--max-tokens", 20,
                 "--prompt", "hello", "--tokenizer", tok)
    alias = _main(capsysbinary, "run", model, "--temperature", 0.7, "--top-p", 0.8, "--seed", 5, "--steps", 20,
                  "--prompt", "hello", "--tokenizer", tok)
    assert short[0] == long[0] == alias[0] == 0
    assert short[1].startswith(b"hello") and short[1] == long[1] == alias[1]
    other_seed = _main(capsysbinary, "run", model, "--temperature", 0.7, "--top-p", 0.8, "--seed", 6,
                       "--max-tokens", 20, "--prompt", "hello")
    assert other_seed[1] != short[1]  # the flags reach the sampler


def test_sample_short_flags_equal_long_flags(gpt2_checkpoint, capsysbinary):
    runs = [
        ("-t", 0.9, "-p", 0.8, "-s", 7, "-n", 6, "-i", "Hello"),
        ("--temperature", 0.9, "--top-p", 0.8, "--seed", 7, "--max-tokens", 6, "--prompt", "Hello"),
        ("--temperature", 0.9, "--top-p", 0.8, "--seed", 7, "--max-new-tokens", 6, "--prompt", "Hello"),
        ("--temperature", 0.9, "--top-p", 0.8, "--seed", 7, "--steps", 6, "--prompt", "Hello"),
    ]
    outs = []
    for flags in runs:
        code, out, _ = _main(capsysbinary, "sample", gpt2_checkpoint, *flags)
        assert code == 0
        outs.append(out.split(b"---\n")[1:-1])  # the samples, without the timing line
    assert outs[0][0].startswith(b"Hello") and all(o == outs[0] for o in outs)
    code, out, _ = _main(capsysbinary, "sample", gpt2_checkpoint, "-t", 0.9, "-p", 0.8, "-s", 8, "-n", 6, "-i", "Hello")
    assert out.split(b"---\n")[1:-1] != outs[0]


@pytest.mark.parametrize("argv,usage", [
    (["run", "m.bin", "--bogus", "1"], "usage: llmpy run"),
    (["sample", "m.bin", "--bogus"], "usage: llmpy sample"),
    (["export", "a.bin", "b.bin", "--to", "v1", "--bogus"], "usage: llmpy export"),
    (["plot", "runs/x", "--bogus"], "usage: llmpy plot"),
    (["bench", "run", "--bogus"], "usage: llmpy bench run"),
])
def test_unknown_flag_prints_the_subcommands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and "unrecognized arguments: --bogus" in err
    assert "COMMAND" not in err  # not the top-level usage


def _closed_pipe(argv):
    """Run `llmpy argv` with its stdout a pipe whose reader is gone (`llmpy ... | head` once head has quit)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "llmpy", *map(str, argv)], stdout=w, stderr=subprocess.PIPE,
                              text=True, timeout=300, check=False)
    finally:
        os.close(w)
    return proc


def test_closed_stdout_ends_quietly(llama, gpt2_checkpoint):
    proc = _closed_pipe(["sample", gpt2_checkpoint, "-n", 4])
    assert proc.returncode == EXIT_SIGPIPE and proc.stderr == "", proc.stderr
    proc = _closed_pipe(["run", llama / "model.bin", "-n", 10, "-i", "hello"])  # streams piece by piece
    assert proc.returncode == EXIT_SIGPIPE and proc.stderr == "", proc.stderr


def test_run_steps_beyond_seq_len(llama, capsysbinary):
    model = llama / "model.bin"
    # -n beyond seq_len: a stated stop at the context (the notice names --context-shift), the text of -n seq_len
    code, out, err = _main(capsysbinary, "run", model, "-n", SEQ_LEN + 1, "-t", 0, "-i", "the")
    assert code == 0 and "context full" in err and "--context-shift" in err and "Traceback" not in err
    # without -n, run.c's 256 is lowered to seq_len: the same text as -n seq_len and -n 0
    texts = [_main(capsysbinary, "run", model, *n, "-t", 0, "-i", "the")[1] for n in ([], ["-n", SEQ_LEN], ["-n", 0])]
    assert texts[0] == texts[1] == texts[2] == out and len(texts[0]) > len("the")


def _export(capsysbinary, *argv):
    return _main(capsysbinary, "export", *argv)


def test_export_output_errors(llama, tmp_path, capsysbinary):
    model = llama / "model.bin"
    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"keep me")
    code, _, err = _export(capsysbinary, model, existing, "--to", "v1")
    assert code == 2 and "already exists" in err and "--overwrite" in err and existing.read_bytes() == b"keep me"
    assert _export(capsysbinary, model, existing, "--to", "v1", "--overwrite")[0] == 0
    assert read_llama2c(existing)[2] == 1
    # -o as the flag form of OUTPUT; both forms at once is an error
    assert _export(capsysbinary, model, "-o", tmp_path / "flag.bin", "--to", "v0")[0] == 0
    assert (tmp_path / "flag.bin").read_bytes() == model.read_bytes()
    assert _export(capsysbinary, model, tmp_path / "a.bin", "-o", tmp_path / "b.bin", "--to", "v0")[0] == 2
    # a file where a directory belongs: under the output's path, or as the --to hf directory
    for output, to, message in [(existing / "out.bin", "v1", "is a file"), (existing, "hf", "is a file"),
                                (tmp_path, "v1", "is a directory")]:
        code, _, err = _export(capsysbinary, model, output, "--to", to, "--overwrite")
        assert code == 2 and message in err and "Traceback" not in err, err
    assert existing.is_file()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_export_and_plot_into_read_only_dir(llama, tmp_path, capsysbinary):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = _export(capsysbinary, llama / "model.bin", ro / "out.bin", "--to", "v1")
        assert code == 2 and "not writable" in err and "Traceback" not in err
        code, _, err = _main(capsysbinary, "plot", llama, "-o", ro / "loss.png")
        assert code == 2 and "not writable" in err and "Traceback" not in err
    finally:
        ro.chmod(0o755)


def test_plot_output_errors(tmp_path, capsysbinary):
    pytest.importorskip("matplotlib")
    from llmpy.train.log import Logger

    run = tmp_path / "run"
    run.mkdir()
    log = Logger(run)
    for s in range(5):
        log.log_train(s, 5.0 - s / 10, 3e-4, 1.0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for output, message in [(blocker / "loss.png", "is a file"), (tmp_path, "is a directory")]:
        code, _, err = _main(capsysbinary, "plot", run, "-o", output)
        assert code == 2 and message in err and "Traceback" not in err, err
    # a directory that does not exist yet is made
    code, _, _ = _main(capsysbinary, "plot", run, "-o", tmp_path / "new" / "dir" / "loss.png")
    assert code == 0 and (tmp_path / "new" / "dir" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_export_v2_lowers_the_default_group_size(tmp_path, capsysbinary):
    # dim 48 and hidden_dim 80: 64 and 32 do not divide them, 16 does (llama2.c's export.py halves the same way)
    config = LlamaConfig(48, 80, 1, 4, 4, 40, 16, True)
    weights = random_weights(config, np.random.default_rng(1))
    write_llama2c(tmp_path / "m.bin", config, weights, 0)
    code, out, _ = _export(capsysbinary, tmp_path / "m.bin", tmp_path / "q.bin", "--to", "v2")
    assert code == 0 and b"group size lowered from 64 to 16" in out and b"v0 -> v2 (group size 16)" in out
    got_config, got, version, group_size = read_llama2c(tmp_path / "q.bin")
    assert (got_config, version, group_size) == (config, 2, 16)
    for name in ("wq", "w1", "w2"):  # each group's error is at most half a step of its own scale
        w = weights[name][0]
        groups = w.reshape(w.shape[0], -1, 16)
        step = np.abs(groups).max(-1, keepdims=True) / 127
        err = np.abs(dequantize(got[name][0]).reshape(groups.shape) - groups)
        assert (err <= step * 0.5 + 1e-7).all()
    # a group size asked for explicitly is not changed
    code, _, err = _export(capsysbinary, tmp_path / "m.bin", tmp_path / "q32.bin", "--to", "v2", "--group-size", 32)
    assert code == 2 and "group size 32" in err


def test_run_context_allow_nonfinite_and_threads(llama, tmp_path, capsysbinary):
    """--context N runs a model whose header asks for an absurd seq_len (the message names the flag); the text of
    the first N positions is the same as with the header's context; --allow-nonfinite loads NaN weights with a
    warning instead of an error; --threads 1 gives the same text as the default threads."""
    import struct

    model, tok = llama / "model.bin", llama / "tokenizer.bin"
    flags = ("-z", tok, "-s", 3, "-n", 24, "-i", "hello")
    code, want, _ = _main(capsysbinary, "run", model, *flags)
    assert code == 0
    config, weights, _, _ = read_llama2c(model)
    write_llama2c(tmp_path / "v1.bin", config, weights, 1)  # v1: no RoPE tables, seq_len only in the header
    raw = bytearray((tmp_path / "v1.bin").read_bytes())
    struct.pack_into("<i", raw, 8 + 6 * 4, SEQ_LEN | 1 << 26)  # magic, version, then seq_len is the 7th int32
    huge = tmp_path / "huge.bin"
    huge.write_bytes(raw)
    code, _, err = _main(capsysbinary, "run", huge, *flags)
    assert code == 2 and "--context" in err and "Traceback" not in err
    code, out, _ = _main(capsysbinary, "run", huge, *flags, "--context", 24)
    assert code == 0 and out == want
    code, out, _ = _main(capsysbinary, "run", model, *flags, "--threads", 1)
    assert code == 0 and out == want
    weights["rms_final"] = weights["rms_final"].copy()
    weights["rms_final"][0] = np.nan
    bad = tmp_path / "nan.bin"
    write_llama2c(bad, config, weights, 0)
    code, _, err = _main(capsysbinary, "run", bad, *flags)
    assert code == 2 and "--allow-nonfinite" in err
    with pytest.warns(RuntimeWarning):  # loads; then the NaN logits are one clear error, not a traceback
        code, _, err = _main(capsysbinary, "run", bad, *flags, "--allow-nonfinite")
    assert code == 2 and "logits are not finite" in err
