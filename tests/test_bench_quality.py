"""`llmpy bench quality`: the Llama through the one trainer against the PyTorch loop (tests/reference/train_torch.py
with llama2.c's model.py forward), same init and batches; val loss at wall-clock marks; the whole command on a
tiny model and a small tinyshakespeare-like text with a sentencepiece vocabulary."""

import argparse
import random

import numpy as np
import pytest
from conftest import import_reference

from llmpy.bench import quality
from llmpy.cli import main
from llmpy.data import prepro
from llmpy.errors import LlmpyError

pytest.importorskip("sentencepiece")

WORDS = ["the", "king", "is", "dead", "and", "we", "shall", "speak", "of", "it", "no", "more", "my", "lord", "but",
         "what", "say", "you", "to", "this", "fair", "night"]


def shakespeare_like(n_sections=1200, seed=0):
    rng = random.Random(seed)
    return "\n\n".join(f"SPEAKER {i % 9}:\n" + "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
                                                       for _ in range(3)) for i in range(n_sections)) + "\n"


TINY_LLAMA = ["--arch", "llama", "--vocab-size", "320", "--channels", "32", "--layers", "2", "--heads", "4",
              "--kv-heads", "2", "-b", "4", "-t", "32", "--warmup", "2", "--val-every", "2", "--val-batches", "2"]


def tiny_args(tmp_path, *extra):
    p = argparse.ArgumentParser()
    quality.add_arguments(p)
    return p.parse_args([*TINY_LLAMA, "-o", str(tmp_path / "runs"), *extra])


@pytest.fixture
def data(tmp_path):
    (tmp_path / "input.txt").write_text(shakespeare_like())
    return prepro.prepare_tinyshakespeare(tmp_path / "ts", source=tmp_path / "input.txt", vocab_size=320, verbose=False)


def test_llama_trainer_matches_the_pytorch_loop(tmp_path, data):
    train_torch = import_reference("train_torch")
    args = tiny_args(tmp_path, "--compare-steps", "10")
    ours, theirs, _, _, model = quality.compare_losses(args, data, tmp_path / "out", train_torch)
    assert "Llama dim=32" in model and "NKV=2" in model and "V=320" in model
    assert theirs[0] == pytest.approx(np.log(320), abs=0.1)  # a fresh model guesses near-uniformly
    assert theirs[-1] < theirs[0] - 0.5   # it learns: the comparison is not between two flat lines
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-4)
    assert ours[0] == pytest.approx(theirs[0], abs=1e-5)


def test_gpt2_trainer_matches_the_pytorch_loop_too(tmp_path):
    train_torch = import_reference("train_torch")
    (tmp_path / "input.txt").write_text(shakespeare_like(3000))
    data = prepro.prepare_tinyshakespeare(tmp_path / "ts", source=tmp_path / "input.txt", verbose=False)
    args = tiny_args(tmp_path, "--arch", "gpt2", "--compare-steps", "6")
    ours, theirs, _, _, model = quality.compare_losses(args, data, tmp_path / "out", train_torch)
    assert "L=2 C=32 NH=4 V=50257" in model
    assert theirs[-1] < theirs[0] - 0.3
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-4)


def test_val_loss_at_marks():
    summary = {"val_losses": {0: 6.0, 10: 5.0, 20: 4.0, 30: 3.5}, "val_seconds": {0: 1, 10: 250, 20: 500, 30: 930}}
    assert quality.val_loss_at_marks(summary, [5, 15]) == [(5, 10, 250 / 60, 5.0), (15, 30, 15.5, 3.5)]
    assert quality.val_loss_at_marks(summary, [0.001, 1]) == [(1, 30, 15.5, 3.5)]  # nothing by the first mark
    assert quality.parse_marks("15,5") == [5.0, 15.0] and quality.parse_marks(2) == [2.0]
    for bad in ("", "5,x", "0", "-1", "nan"):
        with pytest.raises(LlmpyError, match="--minutes"):
            quality.parse_marks(bad)


def test_the_whole_benchmark_on_a_tiny_llama(tmp_path, monkeypatch, capsys):
    import_reference("train_torch")
    (tmp_path / "input.txt").write_text(shakespeare_like())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["bench", "quality", "--data", str(tmp_path / "input.txt"), "--minutes", "0.03,0.08",
                 "--compare-steps", "3", *TINY_LLAMA, "--val-every", "50", "-o", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "val loss by 0.08 min:" in out and "model: Llama dim=32" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  step ")]
    assert [r[1] for r in rows] == ["0:", "1:", "2:"] and all(float(r[-1]) < 1e-4 for r in rows)
    assert (tmp_path / "cache" / "llmpy" / "data" / "tinyshakespeare" / "tok320" / "prepro.json").is_file()
