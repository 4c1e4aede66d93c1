"""`mpirun -np 2 llmpy train` end to end on a tiny model and a tiny token shard: rank 0 alone logs,
an interrupted 2-rank run resumes bit-identically, and bad launches (another N on resume, ranks with
different configs) stop with one clear message. Skips without mpi4py or an MPI launcher."""

import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmpy import dist as D
from llmpy.formats.tokens import write_shard

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llmpy.cli.train") is None,
                                reason="this version has no `llmpy train`")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_dist import TIMEOUT, clean_env

V = 97
STEPS, EVERY = 6, 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    base = rng.integers(0, V, size=50)
    tokens = np.concatenate([np.roll(base, k) for k in range(120)]).astype(np.uint16)  # 6000 tokens
    write_shard(d / "tiny_train_000001.bin", tokens, vocab_size=V)
    write_shard(d / "tiny_val_000000.bin", tokens[:1000], vocab_size=V)
    return d


def train_argv(shards, out, *extra):
    return [sys.executable, "-m", "llmpy", "train", "-i", str(shards / "tiny_train_*.bin"),
            "-j", str(shards / "tiny_val_*.bin"), "--layers", "2", "--channels", "32", "--heads", "2",
            "--max-seq-len", "32", "--vocab-size", str(V), "-b", "2", "-t", "16", "-x", str(STEPS),
            "-v", str(EVERY), "-m", "2", "-g", "0", "-n", str(EVERY), "-l", "1e-3", "-z", "1",
            "-o", str(out), "--no-plot", "--progress", "lines", *extra]


def launch(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=clean_env(), check=False)
    return proc


def mpirun_prefix(ranks=2):
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'llmpy[mpi]')")
    if D.find_mpirun() is None:
        pytest.skip("no mpirun/mpiexec next to this Python or on PATH")
    return D.mpirun_command(ranks)


def step_files(out, step):
    return sorted(p for p in Path(out).iterdir() if re.search(rf"_{step:08d}(_\d+)?\.(bin|npz)$", p.name))


def test_two_rank_run_logs_on_rank_0_and_resumes_bit_identically(shards, tmp_path):
    out = tmp_path / "run"
    proc = launch(mpirun_prefix() + train_argv(shards, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone prints: every step line once, not once per rank
    for step in range(1, STEPS + 1):
        assert len(re.findall(rf"step\s+{step}/{STEPS} \|", proc.stdout)) == 1, proc.stdout
    assert proc.stdout.count("final val loss") == 1
    # one optimizer shard per rank; ZeRO-1 halves m and v
    names = {p.name for p in step_files(out, STEPS)}
    assert names == {f"model_{STEPS:08d}.bin", f"state_{STEPS:08d}_00000.npz", f"state_{STEPS:08d}_00001.npz"}
    m_sizes = [np.load(out / f"state_{STEPS:08d}_0000{r}.npz")["opt.m"].size for r in (0, 1)]
    num_params = (np.fromfile(out / f"model_{STEPS:08d}.bin", dtype=np.float32).size - 256)
    assert sum(m_sizes) == num_params and abs(m_sizes[0] - m_sizes[1]) <= 1
    final = {p.name: p.read_bytes() for p in step_files(out, STEPS)}

    # killed while writing the last checkpoint: no DONE marker, its files partly there
    (out / f"DONE_{STEPS:08d}").unlink()
    (out / f"state_{STEPS:08d}_00001.npz").unlink()
    proc = launch(mpirun_prefix() + train_argv(shards, out, "-y", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"step    {EVERY}/{STEPS}" not in proc.stdout and f"step    {STEPS}/{STEPS}" in proc.stdout
    resumed = {p.name: p.read_bytes() for p in step_files(out, STEPS)}
    assert resumed.keys() == final.keys()
    for name, before in final.items():   # the model and both ranks' optimizer and loader states, exactly
        if name.endswith(".bin"):
            assert resumed[name] == before, f"{name} differs after resume"
            continue
        a = np.load(io.BytesIO(resumed[name]), allow_pickle=False)
        b = np.load(io.BytesIO(before), allow_pickle=False)
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")

    # resuming these 2-rank checkpoints with 1 process is refused with the launch line to use
    proc = launch(train_argv(shards, out, "-y", "1"))
    assert proc.returncode == 2
    assert "mpirun -np 2" in proc.stderr and "Traceback" not in proc.stderr


def test_ranks_with_different_configs_stop_with_one_message(shards, tmp_path):
    # MPMD launch: rank 0 and rank 1 run the same command with a different seed
    prefix = mpirun_prefix(1)
    cmd = prefix + train_argv(shards, tmp_path / "a", "--seed", "1") + [":", "-np", "1"] + \
        train_argv(shards, tmp_path / "a", "--seed", "2")
    proc = launch(cmd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("differs across ranks") == 1, proc.stderr[-3000:]
    assert "llmpy train: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_two_ranks_equal_one_process_and_zero1_equals_plain_data_parallel(family, tmp_path):
    """tests/mpi_worker.py's tiny model of each family, under mpirun -np 2 with B rows per rank, against one
    process on the 2B rows; ZeRO-1 against plain data-parallel."""
    from test_dist import RANKS, WORKER, B, load_worker
    out = tmp_path / "train.npz"
    proc = launch(mpirun_prefix(RANKS) + [sys.executable, str(WORKER), "train", str(out), str(B), family])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    ref_losses, ref_params, _, _ = load_worker().train(D.Dist(), 0, RANKS * B, family=family)
    n = ref_params.size
    for z in (0, 1):
        # the same losses, grad norms and parameters up to float32 summation order (the mean of rank means)
        np.testing.assert_allclose(got[f"losses{z}"], ref_losses, rtol=2e-6, atol=0)
        np.testing.assert_allclose(got[f"params{z}"], ref_params, rtol=0, atol=5e-6)
        assert bool(got[f"resume_exact{z}"]), f"zero stage {z}: restart from a saved state was not bit-identical"
    assert got["m_sizes1"].tolist() == [n // 2, n - n // 2]
    np.testing.assert_array_equal(got["params1"], got["params0"])   # ZeRO-1 is plain DP, bit for bit
    np.testing.assert_array_equal(got["losses1"][:, 0], got["losses0"][:, 0])


def test_two_rank_llama_run_with_zero1_resumes_bit_identically(shards, tmp_path):
    """`mpirun -np 2 llmpy train -e llama:...`: the checkpoints are llama2.c v0 files; a resume from the
    middle checkpoint rewrites the last one bit for bit (model and both ranks' states)."""
    from llmpy.formats.llama2c import read_llama2c
    out = tmp_path / "llama"
    argv = train_argv(shards, out, "-e", "llama:d32l2h4kv2", "--shuffle", "llmc")
    proc = launch(mpirun_prefix() + argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Llama dim=32") == 1
    config, _, version, _ = read_llama2c(out / f"model_{STEPS:08d}.bin")
    assert (version, config.dim, config.n_kv_heads, config.vocab_size) == (0, 32, 2, V)
    final = {p.name: p.read_bytes() for p in step_files(out, STEPS)}
    assert len(final) == 3
    for name in ("DONE", "state", "model"):
        for p in out.glob(f"{name}_{STEPS:08d}*"):
            p.unlink()
    proc = launch(mpirun_prefix() + argv + ["-y", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = {p.name: p.read_bytes() for p in step_files(out, STEPS)}
    assert resumed.keys() == final.keys()
    for name, before in final.items():
        if name.endswith(".bin"):
            assert resumed[name] == before, f"{name} differs after resume"
            continue
        a = np.load(io.BytesIO(resumed[name]), allow_pickle=False)
        b = np.load(io.BytesIO(before), allow_pickle=False)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
