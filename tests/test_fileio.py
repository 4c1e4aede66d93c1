"""llmpy.fileio's atomic writer: the user's umask, no predictable temporary name (a symlink planted there is
never followed), nothing left behind on failure, and concurrent writers of one file."""

import os
import stat
import threading

import numpy as np
import pytest

from llmpy import fileio
from llmpy.formats.llama2c import read_llama2c, write_llama2c
from llmpy.formats.tokens import ShardWriter, read_shard, write_shard
from llmpy.llama.model import LlamaConfig, random_weights


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing(umask_027):
    assert fileio.current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # unchanged by the read


def test_written_files_get_the_umask(tmp_path, umask_027):
    # a plain open() is the reference: mkstemp's 0600 must not leak into the result
    open(tmp_path / "reference", "wb").close()
    want = mode(tmp_path / "reference")
    assert want == 0o640
    fileio.atomic_write(tmp_path / "a.bin", [b"abc"])
    write_shard(tmp_path / "s.bin", np.arange(10))
    with ShardWriter(tmp_path / "w.bin") as w:
        w.write(np.arange(5))
    for name in ("a.bin", "s.bin", "w.bin"):
        assert mode(tmp_path / name) == want, name


def test_planted_symlink_is_not_followed(tmp_path):
    # the old writers used OUT.tmp: a symlink there pointed the write at another file
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    config = LlamaConfig(16, 32, 1, 2, 2, 20, 8, True)
    weights = random_weights(config, np.random.default_rng(0))
    out = tmp_path / "model.bin"
    for planted in ("model.bin.tmp", "model.bin.part", "model.bin.tmp.png"):
        (tmp_path / planted).symlink_to(victim)
    write_llama2c(out, config, weights, 1)
    assert victim.read_bytes() == b"precious"
    assert read_llama2c(out)[0] == config
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["victim.txt", "model.bin", "model.bin.tmp", "model.bin.part", "model.bin.tmp.png"])


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "t.bin"
    fileio.atomic_write(target, [b"old"])

    def boom(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_with(target, boom)
    with pytest.raises(ValueError), ShardWriter(tmp_path / "s.bin") as w:
        w.write(np.arange(3))
        raise ValueError("stop")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    start = threading.Barrier(len(payloads))

    def writer(data):
        start.wait()
        # many small writes, so the writers interleave
        fileio.atomic_write(target, [data[i:i + 1000] for i in range(0, len(data), 1000)])

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]
    write_shard(target, np.arange(7))  # and a shard over it is whole too
    assert read_shard(target).tolist() == list(range(7))
