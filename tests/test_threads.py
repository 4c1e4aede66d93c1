"""The thread governor (llmpy/threads.py): the busy cores it reads from /proc/stat-format counters, the thread
counts it picks from them, and a real busy process seen as one busy core."""

import subprocess
import sys
import time

import pytest

from llmpy.threads import CpuLoad, ThreadGovernor

HZ = 100  # USER_HZ on Linux


def _stat(rows):
    """A /proc/stat text for per-CPU (user, nice, system, idle, steal) tick counts."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for i, (user, nice, system, idle, steal) in enumerate(rows):
        lines.append(f"cpu{i} {user} {nice} {system} {idle} 0 0 0 {steal} 0 0")
    return "\n".join(lines + ["intr 0", "ctxt 0"]) + "\n"


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_cpu_load_counts_other_processes_busy_ticks(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(_stat([(0, 0, 0, 100, 0), (0, 0, 0, 100, 0), (0, 0, 0, 100, 0)]))
    own = [0.0]
    monkeypatch.setattr(time, "process_time", lambda: own[0])
    load = CpuLoad(str(stat), cpus=[0, 1])  # cpu2 is not ours: its ticks must not count
    assert load.available
    # one second passes: cpu0 fully busy (0.7 s user + 0.3 s system), cpu1 half busy, 0.4 s of it ours;
    # cpu2 busy all the time
    stat.write_text(_stat([(70, 0, 30, 100, 0), (50, 0, 0, 150, 0), (100, 0, 0, 100, 0)]))
    own[0] = 0.4
    assert load.others_busy() == pytest.approx(1.5 - 0.4)
    # next second: niced work does not count for a process that is not niced; steal time does
    stat.write_text(_stat([(70, 100, 30, 100, 0), (50, 0, 0, 225, 25), (100, 0, 0, 100, 0)]))
    load.count_nice = False
    assert load.others_busy() == pytest.approx(0.25)


def test_cpu_load_without_counters(tmp_path):
    load = CpuLoad(str(tmp_path / "missing"))
    assert not load.available and load.others_busy() is None
    gov = ThreadGovernor(4, load=load)
    assert gov.threads() == 4


class FakeLoad:
    def __init__(self, cpus):
        self.cpus = list(range(cpus))
        self.available = True
        self.value = 0.0

    def others_busy(self):
        return self.value


@pytest.mark.parametrize("cpus, max_threads, others, want", [
    (2, 2, 0.0, 2), (2, 2, 0.4, 2), (2, 2, 0.6, 1), (2, 2, 1.0, 1), (2, 2, 2.0, 1),
    (8, 8, 0.3, 8), (8, 8, 1.0, 7), (8, 8, 3.2, 5), (8, 8, 8.0, 1), (8, 4, 2.0, 4), (8, 4, 4.7, 3),
])
def test_governor_picks_the_free_cores(cpus, max_threads, others, want):
    clock, load = FakeClock(), FakeLoad(cpus)
    gov = ThreadGovernor(max_threads, load=load, clock=clock, check_seconds=0.2, first_check_seconds=0.2)
    load.value = others
    assert gov.threads() == max_threads  # no look at the machine before the first interval has passed
    clock.t = 0.25
    assert gov.threads() == want


def test_governor_hysteresis_and_recovery():
    clock, load = FakeClock(), FakeLoad(2)
    gov = ThreadGovernor(2, load=load, clock=clock, check_seconds=0.2, first_check_seconds=0.2)
    seq = [(1.0, 1), (0.5, 1), (0.3, 1), (0.2, 2), (0.45, 2), (0.55, 1)]
    for i, (others, want) in enumerate(seq):
        load.value = others
        clock.t = 0.25 * (i + 1)
        assert gov.threads() == want, (i, others)
        clock.t += 0.1  # within the interval: no new look, same answer even if the load changed
        load.value = 2.0 if want == 2 else 0.0
        assert gov.threads() == want


def test_governor_fixed_count_is_kept():
    clock, load = FakeClock(), FakeLoad(2)
    load.value = 2.0
    gov = ThreadGovernor(2, fixed=2, load=load, clock=clock)
    clock.t = 10.0
    assert gov.threads() == 2


def test_a_busy_process_reads_as_one_busy_core():
    load = CpuLoad()
    if not load.available or len(load.cpus) < 2:
        pytest.skip("needs /proc/stat and 2+ CPUs")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the interpreter starts
        load.others_busy()
        time.sleep(0.5)
        others = load.others_busy()
    finally:
        burner.kill()
        burner.wait()
    assert 0.7 <= others <= len(load.cpus), others


def test_training_step_bits_do_not_depend_on_the_thread_count():
    """The governor may change the thread count between training steps: loss, gradients and grad norm must come
    out bit-identical on 1 and on all threads (BLAS splits no sums; the norm adds fixed parts in order)."""
    import numba
    import numpy as np

    from llmpy.dist import set_blas_threads, set_numba_threads
    from llmpy.gpt2.kernels import sum_of_squares
    from llmpy.gpt2.model import GPT2, GPT2Config, init_params

    n_max = numba.config.NUMBA_NUM_THREADS
    if n_max < 2:
        pytest.skip("needs 2+ threads")
    rng = np.random.default_rng(0)
    cfg = GPT2Config(32, 300, 320, 2, 4, 64)
    p0 = init_params(cfg, rng)
    x = rng.integers(0, 300, (4, 32)).astype(np.int32)
    y = rng.integers(0, 300, (4, 32)).astype(np.int32)
    out = []
    try:
        for n in (n_max, 1):
            set_blas_threads(n)
            set_numba_threads(n)
            model = GPT2(cfg, p0.copy(), 4, 32)
            model.zero_grad()
            loss = model.forward(x, y)
            model.backward()
            out.append((loss, model.grads.copy(), sum_of_squares(model.grads)))
    finally:
        set_blas_threads(n_max)
        set_numba_threads(n_max)
    assert out[0][0] == out[1][0]
    np.testing.assert_array_equal(out[0][1], out[1][1])
    assert out[0][2] == out[1][2]
    assert out[0][2] == pytest.approx(float(np.sum(out[0][1].astype(np.float64) ** 2)), rel=1e-12)
