"""Checkpoints of a training run, llm.c's layout in the output directory:

    model_00000040.bin          the model (rank 0): an llm.c checkpoint (GPT-2) or a llama2.c v0 file (Llama)
    state_00000040_00000.npz    rank 0's optimizer shard (m, v, t), dataloader position, outlier detectors,
                                sampler RNG and step (np.savez: plain arrays, read with allow_pickle=False)
    DONE_00000040               written last, after every rank's files: the checkpoint is complete; JSON with
                                the step, world size and the last train loss ("healthy": finite, not exploding)
    .lock                       held (fcntl.flock) by the run writing here; gone when it ends

Every file is written under a temporary name and renamed, so a crash mid-write never leaves a file that
looks valid, and a step without its DONE marker is ignored on resume; a new run deletes the temporary
files a killed one left. Deleting old checkpoints (-nk) removes the DONE marker first for the same reason,
and never deletes the newest healthy checkpoint, so a diverged run cannot prune away the last good one.

Reading a state back rejects any damage (truncation, bit flips, missing keys, wrong types) with an
LlmpyError naming the file; the values' meaning is checked by each part's load_state_dict.

Not handled: resuming with another number of processes (the optimizer shards and the data order depend
on it; the error says so).
"""

import errno
import fcntl
import glob
import json
import math
import os
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write_with

DONE_RE = re.compile(r"^DONE_(\d{8})$")
META_KEY = "meta_json"
LOCK_NAME = ".lock"
# temporary files of fileio.atomic_write_with (TARGET.XXXXXXXX.tmp) and of `llmpy plot` (loss.png.tmp.png)
TEMP_RE = re.compile(r"^(model_\d{8}\.bin|state_\d{8}_(?P<rank>\d{5})\.npz|DONE_\d{8}|main\.log|loss\.png)"
                     r"(\.[A-Za-z0-9_]+\.tmp|\.tmp\.png)$")
# what a state file's meta must hold: key -> type (the values' meaning is checked where they are loaded)
META_TYPES = {"step": int, "loader": dict, "loss_detector": dict, "norm_detector": dict, "sampler_state": str,
              "tokens_per_step": int, "grad_accum": int, "overfit": bool}
OPT_KEYS = ("opt.m", "opt.v", "opt.t")


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


def disk_error(what, path, e, previous):
    """The LlmpyError for an OSError while writing a run's file (checkpoint, main.log): what is intact, what to do."""
    where = f"the previous complete checkpoint (step {previous}) is intact" if previous is not None else \
        "no earlier complete checkpoint exists"
    reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return LlmpyError(f"could not write {what} {path}: {reason}; {where}. Free space (or choose another "
                      f"-o) and resume with -y 1")


def save_model(out_dir, step, write):
    """model_XXXXXXXX.bin of `step`, written by write(path) (the model family's writer: llm.c or llama2.c)."""
    path = model_path(out_dir, step)
    previous = latest_complete(out_dir)
    try:
        write(path)
    except OSError as e:
        raise disk_error("checkpoint file", path, e, previous) from e
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
        raise disk_error("checkpoint file", path, e, previous) from e
    return path


def mark_done(out_dir, step, info):
    path = done_path(out_dir, step)
    try:
        atomic_write_with(path, lambda f: f.write(json.dumps(info).encode()))
    except OSError as e:
        raise disk_error("checkpoint file", path, e, None) from e
    return path


def damaged(path, out_dir, step, reason):
    """The LlmpyError for a checkpoint file that cannot be resumed from."""
    return LlmpyError(f"cannot resume from {path}: {reason}. Resume from an earlier checkpoint by deleting "
                      f"{done_path(out_dir, step)}, or start afresh with another -o")


def load_state(out_dir, step, rank):
    """(arrays dict, meta dict) of rank's state at step; LlmpyError when the file is damaged or incomplete."""
    path = state_path(out_dir, step, rank)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    # a truncated or bit-flipped zip or .npy header fails in many ways: each means the same damaged file
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
            struct.error, OverflowError, MemoryError) as e:
        raise damaged(path, out_dir, step, f"the file is damaged or truncated ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise damaged(path, out_dir, step, "its metadata is not a JSON object")
    for key, kind in META_TYPES.items():
        if key not in meta or type(meta[key]) is not kind:
            raise damaged(path, out_dir, step, f"its metadata lacks {key!r} of type {kind.__name__}")
    if meta["step"] != step:
        raise damaged(path, out_dir, step, f"it says step {meta['step']}, its name says {step}")
    for key in OPT_KEYS:
        if key not in arrays:
            raise damaged(path, out_dir, step, f"it lacks the array {key!r}")
    return arrays, meta


def sampler_state(text):
    """The sampler's xorshift state from its saved decimal text: 1 <= state < 2^64 (0 would stay 0)."""
    state = int(text)
    if not 0 < state < 1 << 64:
        raise ValueError(f"sampler state {state} is outside 1 .. 2^64-1")
    return state


def overfit_batches(arrays, count, B, T, V):
    """The -a batches saved with a state: `count` (x, y) pairs of (B, T) int32 token ids below V."""
    batches = []
    for i in range(count):
        x, y = arrays[f"overfit.x{i}"], arrays[f"overfit.y{i}"]
        for a in (x, y):
            if a.shape != (B, T) or a.dtype != np.int32 or a.min() < 0 or a.max() >= V:
                raise ValueError(f"overfit batch {i} is {a.dtype} {a.shape}, not ({B}, {T}) int32 ids below {V}")
        batches.append((x, y))
    return batches


def read_done(out_dir, step):
    """The DONE marker's dict (step, world_size, ...); LlmpyError when it is empty or damaged."""
    path = done_path(out_dir, step)
    try:
        info = json.loads(path.read_bytes().decode())
    except (OSError, ValueError) as e:
        raise LlmpyError(f"checkpoint marker {path} is unreadable or damaged ({type(e).__name__}: {e}): delete it "
                         f"to resume from the previous checkpoint") from e
    ok = isinstance(info, dict) and info.get("step") == step and type(info.get("world_size")) is int and \
        info["world_size"] >= 1
    if not ok:
        raise LlmpyError(f"checkpoint marker {path} does not describe step {step} (it holds {str(info)[:80]!r}): "
                         f"delete it to resume from the previous checkpoint")
    return info


def done_info(step, world_size, loss, healthy):
    """What a DONE marker records: the last train loss (None when not finite) and whether it was healthy."""
    return {"step": step, "world_size": world_size, "loss": loss if math.isfinite(loss) else None,
            "healthy": bool(healthy)}


def newest_healthy(out_dir, steps=None):
    """The newest complete step whose DONE marker records a healthy loss (markers without the record count
    as healthy), or None."""
    for step in reversed(complete_steps(out_dir) if steps is None else steps):
        try:
            if read_done(out_dir, step).get("healthy", True):
                return step
        except LlmpyError:
            continue
    return None


def prune(out_dir, keep, major_every=0):
    """Delete all but the newest `keep` complete checkpoints (0 = keep all); steps that are multiples of
    major_every (> 0) stay, and so does the newest healthy one (a diverging run keeps its last good state).
    Files of incomplete checkpoints newer than the kept ones are left alone."""
    if keep <= 0:
        return []
    steps = complete_steps(out_dir)
    kept = set(steps[-keep:]) | {newest_healthy(out_dir, steps)}
    deleted = []
    for step in steps:
        if step in kept or (major_every > 0 and step % major_every == 0):
            continue
        done_path(out_dir, step).unlink()  # first: from here on the step is no longer "complete"
        model_path(out_dir, step).unlink(missing_ok=True)
        for p in glob.glob(str(Path(out_dir) / f"state_{step:08d}_*.npz")):
            os.remove(p)
        deleted.append(step)
    return deleted


def remove_temp_files(out_dir, rank):
    """Delete the temporary files a killed run left in out_dir: rank 0 all but other ranks' state files,
    every other rank its own state files. Call with the directory's RunLock held (by rank 0)."""
    removed = []
    for p in Path(out_dir).glob("*.tmp*"):
        m = TEMP_RE.match(p.name)
        owner = int(m.group("rank")) if m and m.group("rank") else 0
        if m and owner == rank:
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


class RunLock:
    """The one run writing an output directory holds DIR/.lock (fcntl.flock, exclusive, non-blocking) for
    its life. The kernel releases a flock when its process ends, however it ends, so a crashed run leaves
    no stale lock; the file holds the holder's pid for the refusal message. POSIX only (no Windows).

        lock = RunLock(out_dir).acquire()   # LlmpyError naming the other run's pid when it is held
        ...
        lock.release()
    """

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK_NAME
        self.file = None
        self.unsupported = None   # why the file system refused a lock, when it did (the run goes on unlocked)

    def acquire(self):
        while True:
            try:
                f = open(self.path, "a+")  # noqa: SIM115 (held open, and so locked, for the run's life)
            except OSError as e:
                raise LlmpyError(f"cannot write to the output directory {self.path.parent}: {e.strerror or e}; "
                                 f"choose another -o") from e
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                pid = f.read().strip()
                f.close()
                who = f"pid {pid}" if pid.isdigit() else "pid unknown"
                raise LlmpyError(f"another run ({who}) is writing to {self.path.parent}: wait for it to end, or "
                                 f"choose another -o") from None
            except OSError as e:   # a file system without locks (some network mounts)
                f.close()
                self.unsupported = e.strerror or str(e)
                return self
            # the previous holder deletes the file as it releases it: if that happened between our open and
            # our flock, we hold a lock on a deleted file, so try again on the new one
            try:
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def release(self):
        if self.file is None:
            return
        try:
            self.path.unlink()   # while still holding it (see acquire)
        except OSError:
            pass
        self.file.close()
        self.file = None


def existing_run_files(out_dir):
    return sorted(str(p.name) for pat in ("DONE_*", "model_*.bin", "state_*.npz") for p in Path(out_dir).glob(pat))
