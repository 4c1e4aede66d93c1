"""Exact resume: an interrupted run continued with -y 1 equals a run never interrupted, to the bit
(gradient accumulation and shuffled data included); a kill mid-checkpoint leaves the previous one usable."""

import io
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train_helpers import run_interrupted, tiny_config

from llmpy.errors import LlmpyError
from llmpy.train import checkpoint as ckpt
from llmpy.train.log import parse_log
from llmpy.train.loop import Trainer

STEPS = 9
# 2 micro-batches per step (grad accumulation), shuffled train data, outlier detectors on, ZeRO off
COMMON = {"max_steps": STEPS, "checkpoint_every": 3, "total_batch_size": 2 * 4 * 16, "val_every": 4,
          "skip_update_lossz": 6.0}


def _uninterrupted(tmp_path):
    cfg = tiny_config(tmp_path, out="full", **COMMON)
    return Trainer(cfg, stream=io.StringIO()).run()


def _assert_same_run(a, b, dir_a, dir_b):
    assert a["train_losses"] == b["train_losses"]          # exact floats
    assert a["val_losses"][STEPS] == b["val_losses"][STEPS]
    assert np.array_equal(a["params"], b["params"])
    assert a["sample"] == b["sample"]                      # the sampler's RNG was restored too
    la, lb = parse_log(Path(dir_a) / "main.log"), parse_log(Path(dir_b) / "main.log")
    assert la["trl"] == lb["trl"]


def test_ctrl_c_then_resume_is_bit_identical(tmp_path):
    full = _uninterrupted(tmp_path)
    cfg = tiny_config(tmp_path, out="split", **COMMON)
    first = run_interrupted(cfg, after_step=4)
    assert first["interrupted"] and first["final_step"] == 5
    assert ckpt.complete_steps(tmp_path / "split") == [3, 5]
    cfg.resume = True
    second = Trainer(cfg, stream=io.StringIO()).run()
    assert min(second["train_losses"]) == 5
    merged = dict(second, train_losses={**first["train_losses"], **second["train_losses"]})
    _assert_same_run(full, merged, tmp_path / "full", tmp_path / "split")


KILL_SCRIPT = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_train_helpers import tiny_config
from llmpy.train import checkpoint as ckpt
from llmpy.train.loop import Trainer
real_savez = ckpt.np.savez
def savez_then_die(f, **arrays):
    if int(arrays["opt.t"]) == 6:       # the second checkpoint: write part of it, then die (kill -9)
        f.write(b"PK\x03\x04 half a zip file")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_savez(f, **arrays)
ckpt.np.savez = savez_then_die
Trainer(tiny_config(Path({tmp!r}), out="killed", **{common!r})).run()
"""


def test_kill_during_checkpoint_write_then_resume(tmp_path):
    full = _uninterrupted(tmp_path)
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path), common=COMMON)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = tmp_path / "killed"
    assert ckpt.model_path(run, 6).exists()                # the model was written, but
    assert not ckpt.state_path(run, 6, 0).exists()         # its state was not, and no DONE marker:
    assert ckpt.complete_steps(run) == [3]
    assert list(run.glob("state_00000006_00000.npz.*.tmp"))  # the half file kept a temporary name
    cfg = tiny_config(tmp_path, out="killed", resume=True, **COMMON)
    resumed = Trainer(cfg, stream=io.StringIO()).run()
    assert min(resumed["train_losses"]) == 3
    assert all(resumed["train_losses"][s] == full["train_losses"][s] for s in range(3, STEPS))
    assert np.array_equal(resumed["params"], full["params"])
    assert [s for s, _ in parse_log(run / "main.log")["trl"]] == list(range(STEPS))


def test_keep_last_k_deletes_only_old_complete_checkpoints(tmp_path):
    cfg = tiny_config(tmp_path, out="keep", max_steps=10, checkpoint_every=2, checkpoints_keep=2,
                      major_checkpoint_every=4)
    run = tmp_path / "keep"
    Trainer(cfg, stream=io.StringIO()).run()
    assert ckpt.complete_steps(run) == [4, 8, 10]   # the newest 2, plus the major ones (multiples of 4)
    assert sorted(p.name for p in run.glob("state_*")) == [f"state_{s:08d}_00000.npz" for s in (4, 8, 10)]
    assert not ckpt.model_path(run, 2).exists() and not ckpt.model_path(run, 6).exists()
    stray = ckpt.model_path(run, 3)   # an incomplete checkpoint (no DONE marker) is not deleted
    stray.write_bytes(b"partial")
    cfg.resume, cfg.max_steps = True, 14
    Trainer(cfg, stream=io.StringIO()).run()
    assert ckpt.complete_steps(run) == [4, 8, 12, 14]
    assert stray.read_bytes() == b"partial"


def test_truncated_state_file_is_a_clear_error(tmp_path):
    path = ckpt.state_path(tmp_path, 10, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, a=np.arange(1000))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(LlmpyError, match="earlier checkpoint") as e:
        ckpt.load_state(tmp_path, 10, 0)
    assert str(path) in str(e.value)
