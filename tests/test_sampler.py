"""run.c's Sampler: xorshift coins, argmax, multinomial, top-p; top-k for GPT-2."""

import numpy as np
import pytest

from llmpy.errors import LlmpyError
from llmpy.sampler import (
    Sampler,
    random_f32,
    random_u32,
    sample_mult,
    sample_rows,
    sample_token,
    sample_topk,
    sample_topp,
    softmax,
)


def xorshift_reference(seed, n):
    """Independent straightforward xorshift* (run.c's random_u32/random_f32) on explicit 64-bit wraparound."""
    mask = (1 << 64) - 1
    state, out = seed, []
    for _ in range(n):
        state = state ^ (state >> 12)
        state = (state ^ (state << 25)) % (1 << 64)
        state = state ^ (state >> 27)
        u32 = ((state * 0x2545F4914F6CDD1D) & mask) >> 32
        out.append((u32, (u32 >> 8) / 16777216.0))
    return out


def test_xorshift_matches_reference():
    state, got = 42, []
    for _ in range(1000):
        u, _ = random_u32(state)
        f, state = random_f32(state)
        got.append((u, float(f)))
    assert got == xorshift_reference(42, 1000)
    assert all(0 <= u < 2**32 for u, _ in got) and all(0.0 <= f < 1.0 for _, f in got)


def test_seed_reproduces_token_sequence():
    logits = np.random.default_rng(0).standard_normal((20, 50)).astype(np.float32)
    runs = []
    for _ in range(2):
        s = Sampler(50, temperature=1.0, topp=0.0, seed=1337)
        runs.append([s.sample(x) for x in logits])
    # the same tokens from an independent multinomial draw with the reference coins
    want = []
    for x, (_, coin) in zip(logits, xorshift_reference(1337, 20)):
        p = np.exp(x.astype(np.float64) - x.max())
        p /= p.sum()
        want.append(int(np.searchsorted(np.cumsum(p), coin, side="right")))
    assert runs[0] == runs[1] == want
    assert Sampler(50, 1.0, 0.0, seed=7).sample(logits[0]) is not None


def test_argmax_at_temperature_zero():
    x = np.array([0.1, 3.0, 3.0, -1.0], np.float32)
    assert Sampler(4, temperature=0.0, seed=1).sample(x) == 1  # first of the ties, no coin used


def test_topp_picks_from_nucleus():
    probs = np.array([0.05, 0.4, 0.01, 0.3, 0.2, 0.04], np.float32)
    # sorted: 0.4 (1), 0.3 (3), 0.2 (4) -> cumulative 0.9 > 0.85: the nucleus is {1, 3, 4}
    picks = {sample_topp(probs, 0.85, c) for c in np.linspace(0, 0.999, 200)}
    assert picks == {1, 3, 4}
    # coin scaled by the nucleus mass 0.9: below 0.4/0.9 -> token 1, then 3, then 4
    assert sample_topp(probs, 0.85, 0.44) == 1 and sample_topp(probs, 0.85, 0.45) == 3
    assert sample_topp(probs, 0.85, 0.77) == 3 and sample_topp(probs, 0.85, 0.79) == 4
    # run.c's cutoff (1 - topp)/(n - 1) drops tokens that cannot be in the nucleus, without changing it
    assert sample_topp(probs, 0.5, 0.99) == 3 and {sample_topp(probs, 0.3, c) for c in (0.0, 0.99)} == {1}


def test_mult_and_topk():
    probs = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    assert [sample_mult(probs, c) for c in (0.0, 0.09, 0.1, 0.29, 0.31, 0.99)] == [0, 0, 1, 1, 2, 3]
    assert sample_mult(np.array([0.5, 0.49], np.float32), 0.999) == 1  # rounding: the last index
    picks = {sample_topk(probs, 2, c) for c in np.linspace(0, 0.999, 100)}
    assert picks == {2, 3}
    assert sample_topk(probs, 2, 0.5) == 3 and sample_topk(probs, 2, 0.6) == 2  # 0.4/0.7 = 0.571


def test_softmax_float32():
    p = softmax(np.array([1000.0, 1000.0], np.float32))
    assert p.dtype == np.float32 and np.allclose(p, 0.5)


@pytest.mark.parametrize("kw", [{"temperature": -0.1}, {"topp": 1.5}, {"topp": -0.1}, {"seed": 0}])
def test_bad_values_raise(kw):
    args = {"temperature": 1.0, "topp": 0.9, "seed": 1} | kw
    with pytest.raises(LlmpyError):
        Sampler(10, **args)


@pytest.mark.parametrize("V", [2, 7, 100, 32000])
def test_sample_rows_equals_sample_token_row_by_row(V):
    """sample_rows (the fast path: rows of softmax in NumPy arrays, draw_rows in Numba) gives the tokens, and
    leaves the coins, that sample_token gives row by row with each sampler's coins: near-uniform and peaked rows,
    ties, every mode (greedy, multinomial, top-p, a top-p below 1/V), mixed in one call."""
    rng = np.random.default_rng(V)
    settings = [(1.0, 0.9), (0.8, 1.0), (1.3, 0.5), (0.0, 0.9), (1.0, 0.0), (1.0, 0.999), (0.7, 1e-7), (2.0, 0.95)]
    for scale in (0.05, 1.0, 8.0):
        logits = (rng.standard_normal((len(settings), V)) * scale).astype(np.float32)
        if V >= 100:
            logits[:, V // 2:V // 2 + 20] = logits[:, :20]  # equal probabilities: the lower index ranks first
        before = logits.copy()
        fast = [Sampler(V, t, p, seed) for seed, (t, p) in enumerate(settings, 1)]
        plain = [Sampler(V, t, p, seed) for seed, (t, p) in enumerate(settings, 1)]
        for _ in range(20):
            got = sample_rows(fast, logits)
            want = [sample_token(row, s.temperature, 0, s.topp, s.random_f32) for s, row in zip(plain, logits)]
            assert got == want
            assert all(isinstance(t, int) for t in got)
            assert [s.rng_state for s in fast] == [s.rng_state for s in plain]
        assert [sample_rows(fast[i:i + 1], logits[i:i + 1])[0] for i in range(len(fast))] == [
            sample_token(row, s.temperature, 0, s.topp, s.random_f32) for s, row in zip(plain, logits)]
        np.testing.assert_array_equal(logits, before)


def test_topp_below_one_over_v_is_the_most_likely_token():
    probs = np.full(4, 0.25, np.float32)
    probs[2] = 0.25000003  # the cutoff (1 - topp) / 3 is above every probability
    assert sample_topp(probs, 1e-7, 0.5) == 2
    assert Sampler(4, 1.0, 1e-7, 3).sample(np.log(probs)) == 2


def test_sample_rows_refuses_non_finite_logits():
    x = np.zeros((2, 5), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(LlmpyError, match="not finite"):
        sample_rows([Sampler(5), Sampler(5)], x)
