"""Each lr schedule against its formula, written here independently of llmpy.train.schedule."""

import math

import pytest

from llmpy.errors import LlmpyError
from llmpy.train.schedule import learning_rate

LR, WARMUP, STEPS, FRAC = 6e-4, 10, 100, 0.1


def expected(name, s):
    if s < WARMUP:
        return LR * (s + 1) / WARMUP
    lo = LR * FRAC
    if name == "cosine":
        return lo + (LR - lo) * (1 + math.cos(math.pi * (s - WARMUP) / (STEPS - WARMUP))) / 2
    if name == "linear":
        return LR + (lo - LR) * (s - WARMUP) / (STEPS - WARMUP)
    if name == "constant":
        return LR
    if s < 80:  # wsd: stable until 80% of the run, then 1 - sqrt decay
        return LR
    return lo + (LR - lo) * (1 - math.sqrt((s - 80) / 20))


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "wsd"])
def test_schedule_matches_formula(name):
    for s in range(STEPS + 1):
        assert learning_rate(name, s, LR, WARMUP, STEPS, FRAC) == pytest.approx(expected(name, s), rel=1e-12, abs=0)


def test_schedule_endpoints():
    assert learning_rate("cosine", 0, LR, 0, STEPS, FRAC) == pytest.approx(LR, rel=1e-12)
    assert learning_rate("cosine", STEPS, LR, 0, STEPS, FRAC) == pytest.approx(LR * FRAC)
    assert learning_rate("linear", STEPS, LR, 0, STEPS, 0.0) == 0.0
    assert learning_rate("wsd", STEPS, LR, 0, STEPS, 0.0) == 0.0
    assert learning_rate("cosine", WARMUP - 1, LR, WARMUP, STEPS, FRAC) == LR


def test_unknown_schedule():
    with pytest.raises(LlmpyError, match="unknown lr schedule 'step'"):
        learning_rate("step", 0, LR, 0, STEPS, FRAC)
