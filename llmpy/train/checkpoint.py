"""Checkpoints of a training run, llm.c's layout in the output directory:

    model_00000040.bin          the model, an llm.c checkpoint (rank 0)
    state_00000040_00000.npz    rank 0's optimizer shard (m, v, t), dataloader position, outlier detectors,
                                sampler RNG and step (np.savez: plain arrays, read with allow_pickle=False)
    DONE_00000040               written last, after every rank's files: the checkpoint is complete

Every file is written under a temporary name and renamed, so a crash mid-write never leaves a file that
looks valid, and a step without its DONE marker is ignored on resume. Deleting old checkpoints (-nk)
removes the DONE marker first for the same reason.

Not handled: resuming with another number of processes (the optimizer shards and the data order depend
on it; the error says so).
"""

import errno
import glob
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write_with
from llmpy.formats.llmc import save_checkpoint

DONE_RE = re.compile(r"^DONE_(\d{8})$")
META_KEY = "meta_json"


def model_path(out_dir, step):
    return Path(out_dir) / f"model_{step:08d}.bin"


def state_path(out_dir, step, rank):
    return Path(out_dir) / f"state_{step:08d}_{rank:05d}.npz"


def done_path(out_dir, step):
    return Path(out_dir) / f"DONE_{step:08d}"


def complete_steps(out_dir):
    """Steps with a DONE marker and a model file, oldest first."""
    steps = []
    for p in Path(out_dir).glob("DONE_*"):
        m = DONE_RE.match(p.name)
        if m and model_path(out_dir, int(m.group(1))).exists():
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_complete(out_dir, rank=0):
    """The newest step whose checkpoint is complete for `rank`, or None."""
    for step in reversed(complete_steps(out_dir)):
        if state_path(out_dir, step, rank).exists():
            return step
    return None


def _disk_error(path, e, previous):
    where = f"the previous complete checkpoint (step {previous}) is intact" if previous is not None else \
        "no earlier complete checkpoint exists"
    reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return LlmpyError(f"could not write checkpoint file {path}: {reason}; {where}. Free space (or choose another "
                      f"-o) and resume with -y 1")



def save_model(out_dir, step, config, params, dtype="float32"):
    path = model_path(out_dir, step)
    previous = latest_complete(out_dir)
    try:
        save_checkpoint(path, config, params, dtype)
    except OSError as e:
        raise _disk_error(path, e, previous) from e
    return path


def save_state(out_dir, step, rank, arrays, meta):
    """This rank's state: named arrays (optimizer, ...) plus a JSON-able dict `meta`."""
    path = state_path(out_dir, step, rank)
    previous = latest_complete(out_dir, rank)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    try:
        atomic_write_with(path, lambda f: np.savez(f, **payload))
    except OSError as e:
        raise _disk_error(path, e, previous) from e
    return path


def mark_done(out_dir, step, info):
    path = done_path(out_dir, step)
    try:
        atomic_write_with(path, lambda f: f.write(json.dumps(info).encode()))
    except OSError as e:
        raise _disk_error(path, e, None) from e
    return path


def load_state(out_dir, step, rank):
    """(arrays dict, meta dict) of rank's state at step."""
    path = state_path(out_dir, step, rank)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise LlmpyError(f"cannot read training state {path} ({e}); resume from an earlier checkpoint by deleting "
                         f"{done_path(out_dir, step)}") from e
    return arrays, meta


def read_done(out_dir, step):
    return json.loads(done_path(out_dir, step).read_text())


def prune(out_dir, keep, major_every=0):
    """Delete all but the newest `keep` complete checkpoints (0 = keep all); steps that are multiples of
    major_every (> 0) stay. Files of incomplete checkpoints newer than the kept ones are left alone."""
    if keep <= 0:
        return []
    steps = complete_steps(out_dir)
    deleted = []
    for step in steps[:-keep]:
        if major_every > 0 and step % major_every == 0:
            continue
        done_path(out_dir, step).unlink()  # first: from here on the step is no longer "complete"
        model_path(out_dir, step).unlink(missing_ok=True)
        for p in glob.glob(str(Path(out_dir) / f"state_{step:08d}_*.npz")):
            os.remove(p)
        deleted.append(step)
    return deleted


def existing_run_files(out_dir):
    return sorted(str(p.name) for pat in ("DONE_*", "model_*.bin", "state_*.npz") for p in Path(out_dir).glob(pat))
