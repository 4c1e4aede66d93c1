"""A training run that goes wrong keeps what it wrote: a diverged run stops (exit 3) without pruning its last
good checkpoint, one run per output directory, -y 1 on a directory without a complete checkpoint, a full
disk while appending main.log, damaged training states rejected with LlmpyError; and logs scripts can use
(lines under mpirun, messages through the bar, an honest sgemm peak, Ctrl-C's closing line and exit 130)."""

import errno
import io
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_train_helpers import V, tiny_config, train_cli

from llmpy.dist import Dist
from llmpy.errors import LlmpyError
from llmpy.formats.llmc import load_checkpoint
from llmpy.train import checkpoint as ckpt
from llmpy.train import loop
from llmpy.train.log import Console, parse_log
from llmpy.train.outlier import OutlierDetector, UpdateGuard
from llmpy.train.peak import SgemmPeak


def _cli(tmp_path, *flags, out="cli"):
    return train_cli(tmp_path, "--progress", "lines", "-g", "0", *flags, out=out)


def _poison_from(monkeypatch, bad_step, what):
    """From the bad_step-th call on, the gradient (or the loss) of accumulate_gradients is NaN."""
    real = loop.accumulate_gradients
    calls = {"n": 0}

    def poisoned(model, loader, grad_accum, batches=None):
        loss = real(model, loader, grad_accum, batches)
        calls["n"] += 1
        if calls["n"] > bad_step:
            if what == "grad":
                model.grads[7] = np.nan
            else:
                loss = math.nan
        return loss
    monkeypatch.setattr(loop, "accumulate_gradients", poisoned)


# -- 14.1: a diverged run --------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["grad", "loss"])
def test_nan_mid_run_stops_and_keeps_the_good_checkpoint(tmp_path, monkeypatch, capsys, what):
    _poison_from(monkeypatch, 5, what)    # steps 0-4 train; 5, 6, 7 are NaN
    rc, out = _cli(tmp_path, "-x", "20", "-n", "2", "-nk", "1", "-sk", "3", "-v", "0")
    captured = capsys.readouterr()
    assert rc == loop.EXIT_DIVERGED == 3
    assert "training diverged at step 8: 3 updates in a row were skipped" in captured.err
    assert "the newest healthy checkpoint is step 4" in captured.err and "delete DONE_00000006" in captured.err
    assert "Traceback" not in captured.err and "final val loss" not in captured.out
    assert captured.out.count("skipped the update:") == 3
    # step 6 was saved (the skipped updates left its params finite) but marked unhealthy; -nk 1 kept step 4
    assert ckpt.complete_steps(out) == [4, 6] and not ckpt.model_path(out, 8).exists()
    good, bad = ckpt.read_done(out, 4), ckpt.read_done(out, 6)
    assert good["healthy"] and math.isfinite(good["loss"]) and not bad["healthy"]
    assert (bad["loss"] is None) == (what == "loss")
    for step in (4, 6):
        assert np.isfinite(load_checkpoint(ckpt.model_path(out, step))[1]).all()
    # NaN never entered the outlier windows: the state of step 6 holds the finite losses and norms of 0-5
    _, meta = ckpt.load_state(out, 6, 0)
    counts = {"loss_detector": 5 if what == "loss" else 6, "norm_detector": 5 if what == "grad" else 6}
    for key, count in counts.items():
        assert meta[key]["count"] == count and all(math.isfinite(x) for x in meta[key]["buffer"])
    trl = parse_log(out / "main.log")["trl"]
    assert [s for s, _ in trl] == list(range(8)) and all(math.isnan(v) == (what == "loss" and s >= 5) for s, v in trl)


def test_update_guard_skips_non_finite_whatever_the_window():
    guard = UpdateGuard(lossz=3.0, gradz=3.0, max_skipped=3, vocab_size=V, window=4)
    reference = OutlierDetector(window=4)
    rng = np.random.default_rng(0)
    for i in range(12):
        loss, norm = 3.0 + 0.1 * rng.standard_normal(), 1.0 + 0.1 * rng.standard_normal()
        if i in (2, 7):   # one inside the filling window, one after
            assert guard.check(math.nan, norm) == "the loss is nan" and math.isnan(guard.zloss)
            assert guard.check(loss, math.inf) == "the gradient norm is inf"
            reference.update(loss)   # a finite loss enters its window even when the update is skipped
            assert guard.skipped_in_row == 2 and not guard.diverged
        assert guard.check(loss, norm) == ""
        assert guard.zloss == pytest.approx(reference.update(loss), nan_ok=True)   # same z as the plain detector
    assert guard.skipped_in_row == 0
    assert all(math.isfinite(x) for x in guard.loss_detector.buffer + guard.norm_detector.buffer)
    for _ in range(3):
        guard.check(math.nan, math.nan)
    assert guard.diverged and UpdateGuard(max_skipped=0).diverged is False
    assert guard.exploding(1e7) and not guard.exploding(2 * math.log(V) - 0.01) and not guard.exploding(math.nan)


def test_exploding_loss_warns_and_ends_non_zero(tmp_path, capsys):
    # lr 1e3 (issue 14): 4.19 -> 1.4e7 -> 2.9e9 -> nan; the run is over before -sk 10 skips
    rc, out = _cli(tmp_path, "-x", "8", "-l", "1e3", "-u", "0", "-k", "constant", "-n", "2", "-nk", "1", "-v", "0")
    captured = capsys.readouterr()
    assert re.search(r"warning: step 2: the loss 1\.\d+e\+07 is over 8\.32, twice that of guessing uniformly",
                     captured.out)
    assert captured.out.count("warning:") == 1
    assert rc == 3 and "training diverged at step 8: it ended with the train loss" in captured.err
    assert "Its checkpoint is marked unhealthy; no complete checkpoint of this run is healthy" in captured.err
    assert ckpt.complete_steps(out) == [8] and not ckpt.read_done(out, 8)["healthy"]


def test_prune_never_deletes_the_newest_healthy_checkpoint(tmp_path):
    for step, healthy in ((2, True), (4, True), (6, False), (8, False)):
        ckpt.model_path(tmp_path, step).write_bytes(b"m")
        ckpt.state_path(tmp_path, step, 0).write_bytes(b"s")
        loss = 3.0 if healthy else math.nan
        ckpt.mark_done(tmp_path, step, ckpt.done_info(step, 1, loss, healthy))
    assert ckpt.prune(tmp_path, keep=1) == [2, 6] and ckpt.complete_steps(tmp_path) == [4, 8]
    assert ckpt.newest_healthy(tmp_path) == 4


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # the forward of inf parameters
def test_non_finite_parameters_are_never_saved(tmp_path):
    trainer = loop.Trainer(tiny_config(tmp_path, max_steps=4, checkpoint_every=2), stream=io.StringIO())
    real_step = trainer.train_step

    def step_then_break(step):
        out = real_step(step)
        if step == 2:
            trainer.model.params[3] = np.inf
        return out
    trainer.train_step = step_then_break
    with pytest.raises(loop.TrainingDiverged, match="diverged at step 4: the parameters are not finite. No checkpoint"):
        trainer.run()
    assert ckpt.complete_steps(tmp_path / "run") == [2] and not trainer.lock


# -- 14.2: one run per output directory ---------------------------------------------------------------

def test_a_second_run_on_one_directory_is_refused(tmp_path, capsys):
    (tmp_path / "cli").mkdir()
    lock = ckpt.RunLock(tmp_path / "cli").acquire()
    rc, out = _cli(tmp_path)
    assert rc == 2 and f"another run (pid {os.getpid()}) is writing to {out}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]   # nothing written beside the holder's lock
    lock.release()
    assert _cli(tmp_path)[0] == 0 and not (out / ".lock").exists()
    # in one process too: a Trainer holds the directory from setup to the end of run()
    cfg = tiny_config(tmp_path, out="two")
    first = loop.Trainer(cfg, stream=io.StringIO())
    with pytest.raises(LlmpyError, match="another run"):
        loop.Trainer(cfg, stream=io.StringIO())
    first.run()
    cfg.resume = True
    loop.Trainer(cfg, stream=io.StringIO()).run()


def test_the_lock_of_a_killed_run_is_not_stale(tmp_path, capsys):
    out = tmp_path / "cli"
    out.mkdir()
    script = (f"import time; from llmpy.train.checkpoint import RunLock; lock = RunLock({str(out)!r}).acquire(); "
              f"print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _ = _cli(tmp_path)
        assert rc == 2 and f"another run (pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.kill()   # as kill -9: the kernel drops its flock
        holder.wait()
    assert _cli(tmp_path)[0] == 0


# -- 14.3: a full disk while appending main.log ------------------------------------------------------------

def test_full_disk_during_a_log_append_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    import llmpy.train.log as log_module
    appends = {"n": 0}

    def open_that_fills(path, mode="r", *args, **kwargs):
        if mode == "a":
            appends["n"] += 1
            if appends["n"] == 8:   # s:0 tel, s:0..4 trl, s:4 tel, then the line of step 5
                raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *args, **kwargs)
    monkeypatch.setattr(log_module, "open", open_that_fills, raising=False)
    rc, out = _cli(tmp_path, "-x", "8", "-n", "4", "-v", "4")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"could not write the training log {out / 'main.log'}: the disk is full; the previous complete " \
           "checkpoint (step 4) is intact. Free space" in err
    monkeypatch.undo()
    rc, _ = _cli(tmp_path, "-x", "8", "-n", "4", "-v", "4", "-y", "1")
    assert rc == 0 and [s for s, _ in parse_log(out / "main.log")["trl"]] == list(range(8))


def test_full_tmpfs_during_a_log_append(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        cfg = tiny_config(tmp_path, max_steps=10, checkpoint_every=2, checkpoints_keep=1, val_every=0, gen_tokens=0)
        cfg.output_dir = str(mnt / "run")
        trainer = loop.Trainer(cfg, stream=io.StringIO())
        real_save = trainer.save

        def save_then_fill_the_disk():
            real_save()
            log = mnt / "run" / "main.log"
            with open(log, "a") as f:   # end main.log at a page boundary: its next append needs a new page
                f.write("#" * (-(log.stat().st_size + 1) % 4096) + "\n")
            with open(mnt / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 4096)
        trainer.save = save_then_fill_the_disk
        with pytest.raises(LlmpyError, match=r"main.log: the disk is full; the previous complete checkpoint "
                                             r"\(step 2\) is intact"):
            trainer.run()
        (mnt / "filler").unlink()
        cfg.resume = True
        summary = loop.Trainer(cfg, stream=io.StringIO()).run()
        assert summary["final_step"] == 10 and min(summary["train_losses"]) == 2
        assert [s for s, _ in parse_log(mnt / "run" / "main.log")["trl"]] == list(range(10))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- 14.4: damaged training states -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A 2-step run with its checkpoint at step 2 (state and DONE marker), and a resuming Trainer's config."""
    tmp = tmp_path_factory.mktemp("state")
    cfg = tiny_config(tmp, max_steps=2, gen_tokens=0, skip_update_lossz=6.0)
    loop.Trainer(cfg, stream=io.StringIO()).run()
    cfg.resume, cfg.max_steps = True, 3
    return cfg, tmp / "run"


def _resume_state(cfg, out, state_bytes):
    """Resume with this state file in place: LlmpyError, or the loaded trainer (then released)."""
    path = ckpt.state_path(out, 2, 0)
    original = path.read_bytes()
    path.write_bytes(state_bytes)
    try:
        trainer = loop.Trainer(cfg, stream=io.StringIO())
        trainer.release()
        return trainer
    finally:
        path.write_bytes(original)


def _rewrite(path, change):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop(ckpt.META_KEY).tobytes().decode())
    change(arrays, meta)
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{ckpt.META_KEY: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})
    return buf.getvalue()


def test_truncated_and_bit_flipped_states_are_llmpy_errors(saved_run):
    cfg, out = saved_run
    data = ckpt.state_path(out, 2, 0).read_bytes()
    rng = np.random.default_rng(0)
    cuts = [0, 1, 4, 30, len(data) // 2, len(data) - 22, len(data) - 1]
    flips = sorted(rng.choice(len(data) * 8, 200, replace=False))
    outcomes = {"error": 0, "loaded": 0}
    for cut in cuts:
        with pytest.raises(LlmpyError, match=r"cannot resume from .*state_00000002_00000.npz.*DONE_00000002"):
            _resume_state(cfg, out, data[:cut])
    for bit in flips:
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:   # a flip in a header's timestamp is harmless; everything else must be an LlmpyError
            _resume_state(cfg, out, bytes(damaged))
            outcomes["loaded"] += 1
        except LlmpyError:
            outcomes["error"] += 1
    assert outcomes["error"] >= 180, outcomes   # CRC-32 guards every member's bytes


@pytest.mark.parametrize("change, message", [
    (lambda a, m: a.update({"opt.v": -a["opt.v"] - 1.0}), "negative v"),
    (lambda a, m: a["opt.v"].__setitem__(5, np.nan), "NaN or inf in m or v"),
    (lambda a, m: a.update({"opt.m": a["opt.m"][:-1]}), r"m is float32 \(30591,\)"),
    (lambda a, m: a.update({"opt.m": a["opt.m"].astype(np.float64)}), "m is float64"),
    (lambda a, m: a.update({"opt.t": np.array(-1)}), r"t=array\(-1\) is not an integer >= 0"),
    (lambda a, m: a.update({"opt.t": np.array(5)}), "the optimizer took 5 steps by step 2"),
    (lambda a, m: a.update({"opt.t": np.array(0)}), "t=0 .* m or v is not zero"),
    (lambda a, m: a.update({"opt.t": np.array(1.5)}), "is not an integer"),
    (lambda a, m: a.pop("opt.t"), "lacks the array 'opt.t'"),
    (lambda a, m: m.update(step=-2), "it says step -2"),
    (lambda a, m: m.pop("loader"), "lacks 'loader'"),
    (lambda a, m: m.update(grad_accum="1"), "lacks 'grad_accum' of type int"),
    (lambda a, m: m["loss_detector"].update(window=-4), "outlier detector state is impossible: window -4"),
    (lambda a, m: m["norm_detector"].update(count=500), "count 500"),
    (lambda a, m: m["loss_detector"]["buffer"].__setitem__(0, float("nan")), "non-finite"),
    (lambda a, m: m.update(skipped_in_row=-1), "skipped_in_row -1 is negative"),
    (lambda a, m: m.update(sampler_state="0"), "sampler state 0 is outside"),
    (lambda a, m: m.update(sampler_state="x"), "ValueError: invalid literal"),
    (lambda a, m: m["loader"].update(sample_pos=-3), "dataloader state sample -3 is outside"),
    (lambda a, m: m["loader"].pop("epoch"), "dataloader state lacks"),
])
def test_impossible_state_values_are_rejected(saved_run, change, message):
    cfg, out = saved_run
    with pytest.raises(LlmpyError, match=message):
        _resume_state(cfg, out, _rewrite(ckpt.state_path(out, 2, 0), change))


def test_unchanged_state_resumes(saved_run):
    cfg, out = saved_run
    trainer = _resume_state(cfg, out, ckpt.state_path(out, 2, 0).read_bytes())
    assert trainer.step == 2 and trainer.opt.t == 2 and trainer.guard.loss_detector.count == 2


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[1, 2]", b'{"step": 3, "world_size": 1}',
                                     b'{"step": 2, "world_size": "1"}'])
def test_damaged_done_markers_are_llmpy_errors(saved_run, content):
    cfg, out = saved_run
    done = ckpt.done_path(out, 2)
    original = done.read_bytes()
    done.write_bytes(content)
    try:
        with pytest.raises(LlmpyError, match=r"checkpoint marker .*DONE_00000002 .*delete it"):
            loop.Trainer(cfg, stream=io.StringIO())
    finally:
        done.write_bytes(original)


def test_resume_drops_later_and_torn_log_lines(tmp_path):
    from llmpy.train.log import Logger
    (tmp_path / "main.log").write_text("s:0 tel:4.1000\ns:0 trl:4.2000 lr:0.001000 norm:1.00\n"
                                       "s:1 trl:4.0000 lr:0.001000 norm:1.00\ns:2 trl:3.9")   # killed mid-line
    Logger(tmp_path, resume_step=1).log_train(1, 3.5, 1e-3, 0.5)
    assert (tmp_path / "main.log").read_text() == ("s:0 tel:4.1000\ns:0 trl:4.2000 lr:0.001000 norm:1.00\n"
                                                   "s:1 trl:3.5000 lr:0.001000 norm:0.50\n")


def test_a_non_utf8_main_log_is_an_llmpy_error(saved_run):
    cfg, out = saved_run
    log = out / "main.log"
    original = log.read_bytes()
    log.write_bytes(original + b"s:1 trl:\xff\xfe\n")
    try:
        with pytest.raises(LlmpyError, match=r"main.log is not a training log .* offset"):
            loop.Trainer(cfg, stream=io.StringIO()).run()
        with pytest.raises(LlmpyError, match="not a training log"):
            parse_log(log)
    finally:
        log.write_bytes(original)


# -- 15.4: logs that scripts can use -----------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_under_mpirun_auto_progress_prints_lines(tmp_path, monkeypatch):
    assert Console("auto", 10, stream=Terminal(), under_mpi=True).mode == "lines"
    assert Console("auto", 10, stream=Terminal()).mode == "bar"
    # `mpirun -np 1 llmpy train > log`: Open MPI's variables in the environment, a pseudo-terminal as stdout
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    stream = Terminal()
    loop.Trainer(tiny_config(tmp_path, max_steps=3, progress="auto"), dist=Dist(), stream=stream).run()
    assert "step    3/3 | loss" in stream.getvalue() and "\r" not in stream.getvalue()


def test_messages_do_not_land_inside_the_bar(tmp_path):
    stream = Terminal()
    loop.Trainer(tiny_config(tmp_path, max_steps=4, checkpoint_every=2, val_every=2, progress="bar"),
                 stream=stream).run()
    pieces = re.split(r"[\r\n]", stream.getvalue())
    saved = [p for p in pieces if "saved checkpoint" in p]
    assert len(saved) == 2 and all(p.startswith("saved checkpoint") for p in saved), saved
    assert all(p.startswith("val loss") for p in pieces if "val loss" in p)


def test_sgemm_peak_is_measured_again_when_a_step_beats_it():
    measured = iter([40e9, 100e9, 110e9, 90e9])   # a noisy start-up, then the machine's real peak
    peak = SgemmPeak(measure=lambda: next(measured), max_remeasures=3)
    assert peak.fraction(30e9) == (0.75, "")                      # below the peak: no measurement
    fraction, note = peak.fraction(80e9)                          # 200% of the start-up figure
    assert fraction == pytest.approx(0.8) and note == "sgemm peak re-measured: 100.0 GFLOP/s (was 40.0)"
    assert peak.fraction(95e9) == (0.95, "")
    fraction, note = peak.fraction(300e9)   # beats every measurement: reported as it is, not capped
    assert fraction == pytest.approx(300 / 110) and "re-measured: 110.0" in note
    fraction, note = peak.fraction(300e9)
    assert fraction == pytest.approx(300 / 110) and note.startswith("steps still beat") and peak.remeasures == 3
    assert peak.fraction(300e9) == (pytest.approx(300 / 110), "")


def test_ctrl_c_closing_line_has_the_real_step_and_exit_130(tmp_path, monkeypatch, capsys):
    real_step = loop.Trainer.train_step

    def step_and_interrupt(self, step):
        out = real_step(self, step)
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return out
    monkeypatch.setattr(loop.Trainer, "train_step", step_and_interrupt)
    rc, out = _cli(tmp_path, "-x", "20", "-v", "0")
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 130
    assert lines[-1] == f"interrupted at step 5; last val loss {parse_log(out / 'main.log')['tel'][0][1]:.4f} " \
                        f"(step 0); main.log and checkpoints in {out}; continue with -y 1"
    assert ckpt.complete_steps(out) == [5]
