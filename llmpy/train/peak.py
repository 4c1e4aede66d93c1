"""The "% of sgemm peak" of each step: llm.c prints MFU against a GPU's datasheet peak; a CPU has no such
figure, so the peak is measured, as the FLOP/s of a float32 n x n matmul on this machine.

    peak = SgemmPeak()                      # measured once at start-up
    fraction, note = peak.fraction(flops_per_s)

The start-up measurement is the best of several matmuls after a warm-up call (the first one wakes BLAS's
threads). On a busy machine it can still come out low, and a step then seems to run at 300% of the peak.
So a step faster than the peak has the peak measured again, keeping the higher value, at most
MAX_REMEASURES times a run, and `note` says so. A step still faster is reported as it is (over 100%), never
capped: the step's FLOPs are llm.c's estimate (6 N + 6 L C T per token), not a count.
"""

import math
import time

import numpy as np

PEAK_N = 1024          # sgemm size of the peak measurement
PEAK_REPEATS = 5       # timed matmuls after one warm-up; the fastest counts
MAX_REMEASURES = 3     # re-measurements a run may make when steps beat the peak


def sgemm_peak(n=PEAK_N, repeats=PEAK_REPEATS):
    """FLOP/s of the fastest of `repeats` n^3 float32 matmuls, after one untimed warm-up."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


class SgemmPeak:
    def __init__(self, measure=sgemm_peak, max_remeasures=MAX_REMEASURES):
        self.measure, self.max_remeasures = measure, max_remeasures
        self.flops = measure()
        self.remeasures = 0

    def fraction(self, flops_per_s):
        """(flops_per_s / the peak, a note or ""): a rate above the peak first has the peak measured again."""
        note = ""
        if flops_per_s > self.flops and self.remeasures < self.max_remeasures:
            self.remeasures += 1
            again = self.measure()
            if again > self.flops:
                note = f"sgemm peak re-measured: {again / 1e9:.1f} GFLOP/s (was {self.flops / 1e9:.1f})"
                self.flops = again
            if flops_per_s > self.flops and self.remeasures == self.max_remeasures:
                note += ("; " if note else "") + ("steps still beat the measured peak: the % of sgemm peak "
                                                  "overstates them (llm.c's FLOP estimate)")
        return flops_per_s / self.flops, note
