"""`llmpy train` end to end on a tiny model and corpus: learning, main.log, grad accumulation, bad input."""

import errno
import io

import numpy as np
import pytest
from test_train_helpers import V, tiny_config, train_cli, write_corpus

from llmpy.data.dataloader import DataLoader
from llmpy.errors import LlmpyError
from llmpy.formats.llmc import load_checkpoint
from llmpy.gpt2.model import GPT2, GPT2Config, init_params
from llmpy.train import checkpoint as ckpt
from llmpy.train.log import parse_log
from llmpy.train.loop import Trainer, accumulate_gradients


def test_short_run_learns_and_logs(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=30, val_every=10, progress="lines")
    out = io.StringIO()
    summary = Trainer(cfg, stream=out).run()
    losses = summary["train_losses"]
    assert sorted(losses) == list(range(30))
    assert np.mean([losses[s] for s in range(25, 30)]) < losses[0] - 1.0, losses  # log(64) = 4.16 at the start
    vals = summary["val_losses"]
    assert sorted(vals) == [0, 10, 20, 30] and vals[30] < vals[0] - 0.8
    log = parse_log(tmp_path / "run" / "main.log")
    assert [s for s, _ in log["trl"]] == list(range(30))
    assert [s for s, _ in log["tel"]] == [0, 10, 20, 30]
    assert all(abs(v - losses[s]) <= 5e-5 for s, v in log["trl"])
    text = (tmp_path / "run" / "main.log").read_text().splitlines()
    assert text[0] == f"s:0 tel:{vals[0]:.4f}" and text[1].startswith("s:0 trl:") and " lr:" in text[1]
    assert ckpt.complete_steps(tmp_path / "run") == [30]
    config, params = load_checkpoint(ckpt.model_path(tmp_path / "run", 30))
    assert config.vocab_size == V and config.padded_vocab_size == 128
    assert np.array_equal(params, summary["params"])
    assert len(summary["sample"].split()) == cfg.gen_tokens  # ids printed: V=64 has no tokenizer
    assert "step   30/30 | loss" in out.getvalue()


def test_grad_accumulation_equals_big_batch(tmp_path):
    train, _ = write_corpus(tmp_path)
    config = GPT2Config(32, V, 128, 2, 2, 32)
    params = init_params(config, np.random.default_rng(0))
    k, B, T = 3, 2, 16
    small = GPT2(config, params.copy(), B, T)
    small.zero_grad()
    loss_small = accumulate_gradients(small, DataLoader(train, B, T), k)
    big = GPT2(config, params.copy(), k * B, T)
    big.zero_grad()
    loss_big = accumulate_gradients(big, DataLoader(train, k * B, T), 1)
    assert loss_small == pytest.approx(loss_big, rel=1e-6)
    np.testing.assert_allclose(small.grads, big.grads, rtol=1e-4, atol=1e-7)
    assert np.abs(big.grads).max() > 1e-3


@pytest.mark.parametrize("flags, message", [
    (["-t", "64"], "exceeds the model's max_seq_len 32"),
    (["-d", "100"], "not a positive multiple of B*T*processes"),
    (["--vocab-size", "50"], "token id 63 but the model's vocabulary has 50"),
    ([], "no complete checkpoint: pass -y 1 to start the run there"),
    (["-k", "cosine", "-u", "5"], "warmup (5 steps) is longer than the run (2 steps)"),
    (["-h", "1"], "multiple of 4"),
])
def test_bad_input_is_rejected_before_any_work(tmp_path, capsys, flags, message):
    if flags == ["-h", "1"]:
        flags = ["-h", "1", "-b", "3"]
    before = []
    if flags == []:  # a run directory whose only checkpoint is incomplete (no DONE marker)
        (tmp_path / "cli").mkdir()
        (tmp_path / "cli" / "model_00000002.bin").write_bytes(b"partial")
        before = ["model_00000002.bin"]
    rc, out = train_cli(tmp_path, *flags)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == before


def test_resume_flag_on_a_new_directory_starts_a_run(tmp_path, capsys):
    rc, out = train_cli(tmp_path, "-y", "1")   # llm.c's recipes pass -y 1 from the first launch on
    assert rc == 0 and "nothing to resume" in capsys.readouterr().out
    rc, out = train_cli(tmp_path, "-y", "1", "-x", "3")
    assert rc == 0 and ckpt.complete_steps(out) == [2, 3]


def test_resume_flag_starts_a_run_where_no_checkpoint_is_complete(tmp_path, capsys):
    # a first launch killed before its first checkpoint: main.log, a partial model, a temporary file
    out = tmp_path / "cli"
    out.mkdir()
    (out / "main.log").write_text("s:0 tel:4.1589\ns:0 trl:4.1600 lr:0.000300 norm:1.00\n")
    (out / "model_00000002.bin").write_bytes(b"partial")
    (out / "state_00000002_00000.npz.k3_x9abc.tmp").write_bytes(b"PK half")
    keep = out / "notes.tmp"   # not a file llmpy writes: left alone
    keep.write_text("mine")
    rc, _ = train_cli(tmp_path)
    assert rc == 2 and "pass -y 1 to start the run there" in capsys.readouterr().err
    rc, _ = train_cli(tmp_path, "-y", "1")
    text = capsys.readouterr().out
    assert rc == 0 and "no complete checkpoint" in text and "starting a new run" in text
    assert "removed 1 temporary file(s)" in text
    assert ckpt.complete_steps(out) == [2] and not list(out.glob("*.npz.*.tmp")) and keep.read_text() == "mine"
    assert [s for s, _ in parse_log(out / "main.log")["trl"]] == [0, 1]


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    assert train_cli(tmp_path)[0] == 0
    rc, out = train_cli(tmp_path)
    assert rc == 2 and "resume it with -y 1" in capsys.readouterr().err
    rc, out = train_cli(tmp_path, "--overwrite")
    assert rc == 0 and ckpt.complete_steps(out) == [2]


def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, max_steps=4, checkpoint_every=2)
    trainer = Trainer(cfg, stream=io.StringIO())
    real_tofile = np.ndarray.tofile
    calls = {"n": 0}

    def failing_savez(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    original = ckpt.np.savez
    real_save = trainer.save

    def save_then_fail():
        calls["n"] += 1
        if calls["n"] == 2:
            monkeypatch.setattr(ckpt.np, "savez", failing_savez)
        real_save()

    trainer.save = save_then_fail
    with pytest.raises(LlmpyError, match="the disk is full; the previous complete checkpoint \\(step 2\\) is intact"):
        trainer.run()
    monkeypatch.setattr(ckpt.np, "savez", original)
    run = tmp_path / "run"
    assert ckpt.latest_complete(run) == 2
    assert not list(run.glob("*.tmp"))
    assert real_tofile is np.ndarray.tofile
    cfg.resume = True
    summary = Trainer(cfg, stream=io.StringIO()).run()
    assert summary["final_step"] == 4 and ckpt.latest_complete(run) == 4


def test_quick_start_flags_with_a_checkpoint_init(tmp_path, capsys):
    from llmpy.formats.llmc import save_checkpoint
    config = GPT2Config(32, V, 128, 2, 2, 32)
    save_checkpoint(tmp_path / "init.bin", config, init_params(config, np.random.default_rng(4)))
    rc, out = train_cli(tmp_path, "-e", str(tmp_path / "init.bin"), "-l", "1e-4", "-x", "4", "-s", "2", "-g", "4",
                   "-v", "2", "--progress", "lines")
    text = capsys.readouterr().out
    assert rc == 0 and f"checkpoint {tmp_path / 'init.bin'}" in text and text.count("generating:") == 2
    assert [s for s, _ in parse_log(out / "main.log")["tel"]] == [0, 2, 4]


def test_overfit_single_batch(tmp_path):
    summary = Trainer(tiny_config(tmp_path, overfit_single_batch=True, max_steps=15, val_every=0, gen_tokens=0, lr=3e-2,
                                  warmup_steps=0, lr_schedule="constant", total_batch_size=2 * 4 * 16),
                      stream=io.StringIO()).run()
    losses = summary["train_losses"]
    assert losses[14] < losses[0] - 2.0, losses


def test_outlier_detector_is_a_windowed_z_score():
    from llmpy.train.outlier import OutlierDetector
    values = np.random.default_rng(0).normal(3.0, 0.5, 300)
    det = OutlierDetector(window=16)
    for i, v in enumerate(values):
        z = det.update(v)
        if i < 16:
            assert np.isnan(z)
        else:
            window = values[i - 15:i + 1]
            assert z == pytest.approx((v - window.mean()) / window.std(), rel=1e-9, abs=1e-9)


def test_hellaswag_eval_is_logged(tmp_path):
    from llmpy.data.hellaswag import evaluate
    from llmpy.formats.hellaswag import write_evalfile
    rng = np.random.default_rng(0)
    examples = [{"label": int(rng.integers(4)), "ctx_tokens": rng.integers(0, V, 5).tolist(),
                 "ending_tokens": [rng.integers(0, V, 3).tolist() for _ in range(4)]} for _ in range(6)]
    write_evalfile(tmp_path / "hs.bin", examples)
    cfg = tiny_config(tmp_path, vocab_size=50257, channels=16, max_steps=2, val_every=2, gen_tokens=0,
                      hellaswag=True, hellaswag_path=str(tmp_path / "hs.bin"))
    trainer = Trainer(cfg, stream=io.StringIO())
    summary = trainer.run()
    evals = parse_log(tmp_path / "run" / "main.log")["eval"]
    assert [s for s, _ in evals] == [0, 2]
    model = GPT2(trainer.model_config, summary["params"], 4, 16)

    def losses_fn(x, y):
        model.forward(x, y)
        return model.acts["losses"].copy()
    expected = evaluate(examples, 4, 16, losses_fn=losses_fn)["acc_norm"]
    assert evals[-1][1] == pytest.approx(expected, abs=1e-4) and summary["hellaswag"][2] == expected


def test_console_bar_on_a_terminal_and_lines_otherwise():
    from llmpy.train.log import Console

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    plain, tty = io.StringIO(), Terminal()
    for stream in (plain, tty):
        console = Console("auto", 10, stream=stream)
        console.step(0, 10, 3.5, float("nan"), 1.25, float("nan"), 1e-3, 100.0, 1e4, 0.5)
        console.print("val loss 3.4")
        console.close()
    assert plain.getvalue().splitlines() == [
        "step    1/10 | loss 3.500000 | norm 1.2500 | lr 1.00e-03 | 100.0 ms | 10,000 tok/s | 50.0% of sgemm peak",
        "val loss 3.4"]
    assert "1/10" in tty.getvalue() and "loss 3.5000" in tty.getvalue() and "\r" in tty.getvalue()
