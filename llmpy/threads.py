"""How many threads a parallel step should use, chosen from what the other processes leave free.

A decode step is one or many short parallel regions whose threads meet at barriers; a training step is
a chain of BLAS calls and Numba kernels whose threads wait for each other at the end of every one. On an
idle machine that is the fast path. On a busy one (a laptop: a browser, a build, another model) the
scheduler runs some of our threads late, and every barrier then waits for the slowest: measured on the
2-core box with one busy process per core, stories15M decode ran at 4.5-6.9 tok/s on 2 threads against
41.5 tok/s on 1. So the default is not "all threads" but "the threads the other processes leave free":

    governor = ThreadGovernor(max_threads)
    governor.apply()        # cheap: looks at the machine at most every CHECK_SECONDS, sets Numba's and BLAS's count
    ... run the step ...

`CpuLoad` measures the cores that other processes keep busy over the last interval, from the kernel's
per-CPU counters (/proc/stat, only the CPUs this process may run on) minus this process's own CPU time
(time.process_time, all its threads, including workers that spin while waiting). Niced processes do
not count when we are not niced ourselves (the scheduler gives them a small share next to us), steal
time does (a hypervisor that runs another guest on our core delays our threads as surely). The governor
turns that into a thread count with a band between going down and going up, so that noise does not flip it.

Not handled: machines without /proc/stat (macOS, Windows): the governor keeps the maximum there.
Results do not depend on the choice: the decode kernels give every output row to one thread, and the
training kernels' reductions are split into a fixed number of parts, whatever the thread count.
"""

import os
import time

CHECK_SECONDS = 0.2  # look at the machine at most this often (two small file reads: ~50 us)
FIRST_CHECK_SECONDS = 0.05  # the first look comes sooner: a busy machine costs most at the start of a run
DOWN_MARGIN = 0.5    # n threads -> fewer when less than n - 1/2 cores are free (a busy process takes ~1 core)
UP_MARGIN = 0.25     # n threads -> more when at least n + 1 - 1/4 cores are free (the band between: no flapping)


def allowed_cpus():
    """The CPU numbers this process may run on (its affinity set; every CPU where the OS cannot say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


class CpuLoad:
    """Cores of this process's CPU set that other processes kept busy since the previous call."""

    def __init__(self, stat_path="/proc/stat", cpus=None):
        self.stat_path = stat_path
        self.cpus = list(cpus) if cpus is not None else allowed_cpus()
        try:
            self.count_nice = os.getpriority(os.PRIO_PROCESS, 0) > 0
        except (AttributeError, OSError):
            self.count_nice = True
        self.last = self._sample()

    @property
    def available(self):
        """Whether the counters can be read here (Linux)."""
        return self.last is not None

    def _sample(self):
        """(busy seconds of our CPUs, total seconds of our CPUs, this process's CPU seconds), or None."""
        wanted = {f"cpu{i}" for i in self.cpus}
        busy = total = 0
        try:
            with open(self.stat_path) as f:
                for line in f:
                    if not line.startswith("cpu") or line.split(None, 1)[0] not in wanted:
                        continue
                    # user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
                    v = [int(x) for x in line.split()[1:9]]
                    busy += v[0] + v[2] + v[5] + v[6] + v[7] + (v[1] if self.count_nice else 0)
                    total += sum(v)
        except (OSError, ValueError, IndexError):
            return None
        if total == 0:
            return None
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return busy / hz, total / hz, time.process_time()

    def others_busy(self):
        """Cores other processes kept busy since the last call (0 .. len(cpus)); None when unknown."""
        now = self._sample()
        last, self.last = self.last, now
        if now is None or last is None:
            return None
        busy, total, own = (a - b for a, b in zip(now, last))
        if total <= 0:
            return None
        wall = total / len(self.cpus)  # seconds per CPU that passed, in the kernel's ticks
        return min(max((busy - own) / wall, 0.0), float(len(self.cpus)))


class ThreadGovernor:
    """Picks the thread count for the next parallel step from the cores the other processes leave free.

    fixed: a count the user chose (--threads, NUMBA_NUM_THREADS, OMP_NUM_THREADS): always that one.
    The first steps run on max_threads; from the first check on (FIRST_CHECK_SECONDS after the governor was
    made, then every CHECK_SECONDS), n threads while the free cores stay within [n - DOWN_MARGIN,
    n + 1 - UP_MARGIN), fewer or more when they leave it.
    """

    def __init__(self, max_threads, fixed=None, load=None, clock=time.monotonic, check_seconds=CHECK_SECONDS,
                 first_check_seconds=FIRST_CHECK_SECONDS):
        self.max_threads = max(1, int(max_threads))
        self.fixed = fixed
        self.load = load if load is not None or fixed is not None else CpuLoad()
        self.clock = clock
        self.check_seconds = check_seconds
        self.current = self.max_threads if fixed is None else max(1, int(fixed))
        self.next_check = clock() + first_check_seconds
        self.others = None  # the last measurement, for reports

    def threads(self):
        if self.fixed is not None or self.max_threads == 1 or not self.load.available:
            return self.current
        now = self.clock()
        if now < self.next_check:
            return self.current
        self.next_check = now + self.check_seconds
        self.others = self.load.others_busy()
        if self.others is None:
            return self.current
        free = len(self.load.cpus) - self.others
        n = self.current
        if free < n - DOWN_MARGIN:
            n = int(free + DOWN_MARGIN)
        elif free >= n + 1 - UP_MARGIN:
            n = int(free + UP_MARGIN)
        self.current = max(1, min(n, self.max_threads))
        return self.current

    def apply(self):
        """Run the calling thread's next Numba kernels and BLAS calls on threads(); returns that count."""
        n = self.threads()
        use_threads(n)
        return n


def use_threads(n):
    """Numba's thread count for the calling thread (numba keeps one per thread) and OpenBLAS's, when n differs."""
    import numba

    n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    if n != numba.get_num_threads():
        from llmpy.dist import set_blas_threads

        numba.set_num_threads(n)
        set_blas_threads(n)


def user_threads():
    """The thread count the user fixed through the environment (NUMBA_NUM_THREADS, OMP_NUM_THREADS), or None."""
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return None
