"""Each Llama layer of llmpy.llama.layers against PyTorch (llama2.c's model.py math, float64 forward and autograd)
and finite differences; and the fast inference kernels of llmpy.llama.kernels against these plain forwards.

As in tests/test_gpt2_layers.py: backward ADDS INTO its gradient arguments, so every backward runs on gradients
pre-filled with noise that the test subtracts again; each layer is one Case, and four checks run over all:
forward vs torch, backward vs torch autograd (float64, ~1e-10), backward vs central finite differences
(float64), float32 in -> float32 out.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import import_reference

from llmpy.llama import layers

B, T, C, OC, H = 2, 5, 12, 7, 10
MAXT = 8             # rope tables longer than T: only rows 0..T-1 may be used
V = 13
EPS = 1e-5
THETA = 500.0        # not llama2.c's 1e4: the test must see the config's theta used
FD_STEP = 1e-6
FD_TOL = 1e-6
FD_COORDS = 6
AUTOGRAD_RTOL = 1e-10


@dataclass
class Case:
    name: str
    make: Callable       # (rng, dtype) -> dict of numpy inputs
    forward: Callable    # (inputs) -> dict of numpy outputs
    backward: Callable   # (inputs, outputs, douts, grads) -> None, adds into grads
    reference: Callable  # (ref module, dict of torch inputs) -> dict of torch outputs
    diff_inputs: tuple
    diff_outputs: tuple


def _normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# --- embedding ---------------------------------------------------------------------------------------

def _embedding_make(rng, dtype):
    inp = rng.integers(0, 4, size=(B, T)).astype(np.int32)  # 4 ids over 10 positions: repeats are certain
    inp[0, 0] = V - 1
    return {"inp": inp, "wte": _normal(rng, (V, C), dtype)}


def _embedding_forward(x):
    out = np.empty((B, T, C), x["wte"].dtype)
    layers.embedding_forward(out, x["inp"], x["wte"])
    return {"out": out}


def _embedding_backward(x, o, d, g):
    layers.embedding_backward(g["wte"], d["out"], x["inp"])


# --- rmsnorm -----------------------------------------------------------------------------------------

def _rmsnorm_make(rng, dtype):
    return {"inp": (rng.standard_normal((B, T, C)) * 3.0 + 0.5).astype(dtype),
            "weight": (1.0 + 0.3 * rng.standard_normal(C)).astype(dtype)}


def _rmsnorm_forward(x):
    dtype = x["inp"].dtype
    out, rstd = np.empty((B, T, C), dtype), np.empty((B, T), dtype)
    layers.rmsnorm_forward(out, rstd, x["inp"], x["weight"], EPS)
    return {"out": out, "rstd": rstd}


def _rmsnorm_backward(x, o, d, g):
    layers.rmsnorm_backward(g["inp"], g["weight"], d["out"], x["inp"], x["weight"], o["rstd"])


def _rmsnorm_reference(ref, t):
    inp = t["inp"]
    return {"out": ref.rmsnorm(inp, t["weight"], EPS), "rstd": (inp.pow(2).mean(-1) + EPS).rsqrt()}


# --- linear without bias -----------------------------------------------------------------------------

def _linear_make(rng, dtype):
    return {"inp": _normal(rng, (B, T, C), dtype), "weight": _normal(rng, (OC, C), dtype)}


def _linear_forward(x):
    out = np.empty((B, T, OC), x["inp"].dtype)
    layers.linear_forward(out, x["inp"], x["weight"])
    return {"out": out}


def _linear_backward(x, o, d, g):
    layers.linear_backward(g["inp"], g["weight"], d["out"], x["inp"], x["weight"])


# --- rope --------------------------------------------------------------------------------------------

ROPE_HEADS, ROPE_HS = 3, 6


def _rope_make(rng, dtype):
    return {"inp": _normal(rng, (B, T, ROPE_HEADS * ROPE_HS), dtype)}


def _rope_forward(x):
    cos, sin = layers.rope_tables(ROPE_HS, MAXT, THETA, x["inp"].dtype)
    out = np.empty_like(x["inp"])
    layers.rope_forward(out, x["inp"], cos, sin)
    return {"out": out}


def _rope_backward(x, o, d, g):
    cos, sin = layers.rope_tables(ROPE_HS, MAXT, THETA, x["inp"].dtype)
    layers.rope_backward(g["inp"], d["out"], cos, sin)


def _rope_reference(ref, t):
    return {"out": ref.rope(t["inp"].view(B, T, ROPE_HEADS, ROPE_HS), THETA).reshape(B, T, -1)}


# --- attention: multi-head, grouped-query (6 heads over 2), multi-query (4 heads over 1) -------------

def _attention_case(NH, NKV):
    hs = C // NH

    def make(rng, dtype):  # scaled up for peaked softmaxes
        return {"q": _normal(rng, (B, T, C), dtype, 2.0), "k": _normal(rng, (B, T, NKV * hs), dtype, 2.0),
                "v": _normal(rng, (B, T, NKV * hs), dtype)}

    def forward(x):
        dtype = x["q"].dtype
        out, att = np.empty((B, T, C), dtype), np.full((B, NH, T, T), np.nan, dtype)  # NaN: all must be set
        layers.attention_forward(out, att, x["q"], x["k"], x["v"], NH)
        return {"out": out, "att": att}

    def backward(x, o, d, g):
        layers.attention_backward(g["q"], g["k"], g["v"], d["out"], x["q"], x["k"], x["v"], o["att"], NH)

    def reference(ref, t):
        out, att = ref.attention(t["q"], t["k"], t["v"], NH, return_att=True)
        return {"out": out, "att": att}

    return Case(f"attention_{NH}q_{NKV}kv", make, forward, backward, reference, ("q", "k", "v"), ("out",))


# --- swiglu ------------------------------------------------------------------------------------------

def _swiglu_make(rng, dtype):
    return {"h1": _normal(rng, (B, T, H), dtype, 3.0), "h3": _normal(rng, (B, T, H), dtype)}


def _swiglu_forward(x):
    out = np.empty_like(x["h1"])
    layers.swiglu_forward(out, x["h1"], x["h3"])
    return {"out": out}


def _swiglu_backward(x, o, d, g):
    layers.swiglu_backward(g["h1"], g["h3"], d["out"], x["h1"], x["h3"])


CASES = [
    Case("embedding", _embedding_make, _embedding_forward, _embedding_backward,
         lambda ref, t: {"out": t["wte"][t["inp"].long()]}, ("wte",), ("out",)),
    Case("rmsnorm", _rmsnorm_make, _rmsnorm_forward, _rmsnorm_backward, _rmsnorm_reference,
         ("inp", "weight"), ("out",)),
    Case("linear", _linear_make, _linear_forward, _linear_backward,
         lambda ref, t: {"out": t["inp"] @ t["weight"].T}, ("inp", "weight"), ("out",)),
    Case("rope", _rope_make, _rope_forward, _rope_backward, _rope_reference, ("inp",), ("out",)),
    _attention_case(4, 4),
    _attention_case(6, 2),
    _attention_case(4, 1),
    Case("swiglu", _swiglu_make, _swiglu_forward, _swiglu_backward,
         lambda ref, t: {"out": ref.swiglu(t["h1"], t["h3"])}, ("h1", "h3"), ("out",)),
]
CASE_IDS = [c.name for c in CASES]


def _run_backward(case, inputs, rng):
    """Forward, then backward into gradients pre-filled with noise. Returns (douts, grads, grads - prefill)."""
    outputs = case.forward(inputs)
    douts = {k: rng.standard_normal(outputs[k].shape).astype(outputs[k].dtype) for k in case.diff_outputs}
    prefill = {k: rng.standard_normal(inputs[k].shape).astype(inputs[k].dtype) for k in case.diff_inputs}
    grads = {k: v.copy() for k, v in prefill.items()}
    case.backward(inputs, outputs, douts, grads)
    return douts, grads, {k: grads[k] - prefill[k] for k in case.diff_inputs}


def _objective(case, inputs, douts):
    outputs = case.forward(inputs)
    return sum(float(np.sum(outputs[k] * douts[k])) for k in case.diff_outputs)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_torch_float64(case):
    torch = pytest.importorskip("torch")
    ref = import_reference("llama_train_torch")
    inputs = case.make(np.random.default_rng(1), np.float64)
    outputs = case.forward(inputs)
    expected = case.reference(ref, {k: torch.from_numpy(v) for k, v in inputs.items()})
    assert set(expected) == set(outputs)
    for k, v in outputs.items():
        np.testing.assert_allclose(v, expected[k].numpy(), rtol=1e-12, atol=1e-12, err_msg=f"{case.name}: {k}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_matches_torch_autograd_float64(case):
    torch = pytest.importorskip("torch")
    ref = import_reference("llama_train_torch")
    rng = np.random.default_rng(2)
    inputs = case.make(rng, np.float64)
    douts, _, analytic = _run_backward(case, inputs, rng)
    t = {k: torch.from_numpy(v.copy()).requires_grad_(k in case.diff_inputs) for k, v in inputs.items()}
    outs = case.reference(ref, t)
    objective = sum((outs[k] * torch.from_numpy(douts[k])).sum() for k in case.diff_outputs)
    objective.backward()
    for k in case.diff_inputs:
        expected = t[k].grad.numpy()
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(analytic[k], expected, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_RTOL * scale,
                                   err_msg=f"{case.name}: d{k}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_matches_finite_differences_float64(case):
    rng = np.random.default_rng(3)
    inputs = case.make(rng, np.float64)
    douts, _, analytic = _run_backward(case, inputs, rng)
    for k in case.diff_inputs:
        x = inputs[k]
        for i in rng.choice(x.size, size=min(FD_COORDS, x.size), replace=False):
            old = x.flat[i]
            x.flat[i] = old + FD_STEP
            f_plus = _objective(case, inputs, douts)
            x.flat[i] = old - FD_STEP
            f_minus = _objective(case, inputs, douts)
            x.flat[i] = old
            numeric = (f_plus - f_minus) / (2 * FD_STEP)
            assert abs(analytic[k].flat[i] - numeric) <= FD_TOL * (1.0 + abs(numeric)), (
                f"{case.name}: d{k} at flat index {i}: backward {analytic[k].flat[i]!r}, finite difference {numeric!r}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_in_float32_out(case):
    rng32 = np.random.default_rng(4)
    inputs32 = case.make(rng32, np.float32)
    douts32, grads32, analytic32 = _run_backward(case, inputs32, rng32)
    outputs32 = case.forward(inputs32)
    for k, v in outputs32.items():
        assert v.dtype == np.float32, f"{case.name}: output {k} is {v.dtype}"
    for k, v in grads32.items():
        assert v.dtype == np.float32, f"{case.name}: gradient d{k} is {v.dtype}"
    # the float32 forward and backward agree with float64 on the same (float32-representable) numbers
    inputs64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in inputs32.items()}
    outputs64 = case.forward(inputs64)
    for k, v in outputs32.items():
        np.testing.assert_allclose(v, outputs64[k], rtol=1e-4, atol=1e-5, err_msg=f"{case.name}: {k}")
    grads64 = {k: np.zeros(inputs64[k].shape) for k in case.diff_inputs}
    case.backward(inputs64, outputs64, {k: v.astype(np.float64) for k, v in douts32.items()}, grads64)
    for k in case.diff_inputs:
        scale = max(1.0, float(np.abs(grads64[k]).max()))
        np.testing.assert_allclose(analytic32[k], grads64[k], rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=f"{case.name}: d{k}")


def _case(name):
    return next(c for c in CASES if c.name == name)


# --- properties the generic checks do not pin down ---------------------------------------------------

def test_in_place_forms_equal_the_out_of_place_ones():
    """The model runs RoPE in place (out is inp) forward and backward, and writes (accumulate=False)
    gradients with one source: the same numbers as a separate output or adding into zeros."""
    rng = np.random.default_rng(5)
    cos, sin = layers.rope_tables(ROPE_HS, MAXT, THETA, np.float64)
    x = _rope_make(rng, np.float64)["inp"]
    out = np.empty_like(x)
    layers.rope_forward(out, x, cos, sin)
    inplace = x.copy()
    layers.rope_forward(inplace, inplace, cos, sin)
    np.testing.assert_array_equal(inplace, out)
    dx = np.zeros_like(x)
    layers.rope_backward(dx, out, cos, sin)
    layers.rope_backward(out, out, cos, sin, accumulate=False)
    np.testing.assert_array_equal(out, dx)
    np.testing.assert_allclose(dx, x, rtol=0, atol=1e-14)  # a rotation: its transpose undoes it

    case = _case("attention_6q_2kv")
    x = case.make(rng, np.float64)
    o = case.forward(x)
    dout = rng.standard_normal((B, T, C))
    added = {k: np.zeros_like(v) for k, v in x.items()}
    written = {k: np.full_like(v, np.nan) for k, v in x.items()}
    layers.attention_backward(added["q"], added["k"], added["v"], dout, x["q"], x["k"], x["v"], o["att"], 6)
    layers.attention_backward(written["q"], written["k"], written["v"], dout, x["q"], x["k"], x["v"], o["att"], 6,
                              accumulate=False)
    for k in x:
        np.testing.assert_allclose(written[k], added[k], rtol=1e-14, atol=1e-14, err_msg=k)


def test_attention_weights_are_causal_and_normalized():
    case = _case("attention_6q_2kv")
    att = case.forward(case.make(np.random.default_rng(6), np.float64))["att"]
    above = np.triu(np.ones((T, T), dtype=bool), k=1)
    assert np.all(att[..., above] == 0.0), "attention to future positions must be exactly 0"
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


def test_swiglu_saturates_without_overflow():
    h1 = np.array([[[-200.0, -90.0, 0.0, 90.0, 200.0]]], np.float32)
    h3 = np.ones_like(h1)
    out, dh1, dh3 = np.empty_like(h1), np.zeros_like(h1), np.zeros_like(h1)
    with np.errstate(all="raise"):
        layers.swiglu_forward(out, h1, h3)
        layers.swiglu_backward(dh1, dh3, np.ones_like(h1), h1, h3)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.0, 90.0, 200.0], atol=1e-30)
    np.testing.assert_allclose(dh1[0, 0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-30)


# --- the fast inference kernels hold to these plain forwards -----------------------------------------

def test_inference_kernels_match_plain_layers():
    """llmpy.llama.kernels' rmsnorm, SwiGLU, and RoPE + attention over the KV cache (a prompt of T rows in one
    call, then one more position alone) against layers.rmsnorm_forward, swiglu_forward, rope_forward +
    attention_forward: one readable source of truth for the math."""
    from llmpy.llama import kernels

    rng = np.random.default_rng(7)
    NH, NKV, hs, T2 = 6, 2, 8, 7
    C2, KV = NH * hs, NKV * hs
    x = _normal(rng, (1, T2, C2), np.float32, 2.0)
    w = (1.0 + 0.3 * rng.standard_normal(C2)).astype(np.float32)
    want, rstd = np.empty_like(x), np.empty((1, T2), np.float32)
    layers.rmsnorm_forward(want, rstd, x, w, EPS)
    got = np.empty((T2, C2), np.float32)
    kernels.residual_rmsnorm(x[0].copy(), np.zeros((0, C2), np.float32), got, w, EPS)
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-5)

    h13 = _normal(rng, (T2, 2 * H), np.float32, 3.0)
    want = np.empty((1, T2, H), np.float32)
    layers.swiglu_forward(want, h13[None, :, :H], h13[None, :, H:])
    got = np.empty((T2, H), np.float32)
    kernels.swiglu_forward(got, h13)
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-5)

    qkv = _normal(rng, (T2, C2 + 2 * KV), np.float32, 2.0)
    cos, sin = layers.rope_tables(hs, MAXT, 10000.0, np.float32)  # the kernels' theta
    q, k, v = (qkv[None, :, :C2].copy(), qkv[None, :, C2:C2 + KV].copy(), qkv[None, :, C2 + KV:].copy())
    layers.rope_forward(q, q, cos, sin)
    layers.rope_forward(k, k, cos, sin)
    want, att = np.empty((1, T2, C2), np.float32), np.empty((1, NH, T2, T2), np.float32)
    layers.attention_forward(want, att, q, k, v, NH)
    key_cache = np.zeros((1, NKV, MAXT, hs), np.float32)
    value_cache = np.zeros_like(key_cache)
    got = np.empty((T2, C2), np.float32)
    scores = np.empty((T2, NH, MAXT), np.float32)
    zeros = np.zeros(T2, np.int64)
    rows = qkv.copy()
    kernels.attention_forward(got[:T2 - 1], scores, rows[:T2 - 1], key_cache, value_cache, zeros[:T2 - 1],
                              np.arange(T2 - 1), cos, sin, NH, NKV)  # prefill of positions 0..T2-2
    kernels.attention_forward(got[T2 - 1:], scores, rows[T2 - 1:], key_cache, value_cache, zeros[:1],
                              np.array([T2 - 1]), cos, sin, NH, NKV)  # then the last position alone (decode)
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(key_cache[0, :, :T2], k[0].reshape(T2, NKV, hs).transpose(1, 0, 2), atol=1e-6)
    np.testing.assert_allclose(rows[:, :C2], q[0], atol=1e-6)  # q rotated in place, as layers.rope_forward


# --- the fused training kernels hold to the plain layers they accelerate -----------------------------

KERNEL_CASES = {  # case -> the layers functions llmpy.llama.train_kernels replaces in it
    "embedding": ("embedding_forward", "embedding_backward"),
    "rmsnorm": ("rmsnorm_forward", "rmsnorm_backward"),
    "rope": ("rope_forward", "rope_backward"),
    "attention_4q_4kv": ("attention_forward", "attention_backward"),
    "attention_6q_2kv": ("attention_forward", "attention_backward"),
    "attention_4q_1kv": ("attention_forward", "attention_backward"),
    "swiglu": ("swiglu_forward", "swiglu_backward"),
}


@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_train_kernels_match_plain_layers(name, monkeypatch):
    """Each case run through the kernels in float32 against the plain layers in float64 on the same numbers."""
    pytest.importorskip("numba")
    from llmpy.llama import train_kernels

    case = _case(name)
    rng = np.random.default_rng(8)
    inputs32 = case.make(rng, np.float32)
    inputs64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in inputs32.items()}
    outputs64 = case.forward(inputs64)
    douts = {k: rng.standard_normal(outputs64[k].shape) for k in case.diff_outputs}
    prefill = {k: rng.standard_normal(inputs64[k].shape) for k in case.diff_inputs}
    grads64 = {k: v.copy() for k, v in prefill.items()}
    case.backward(inputs64, outputs64, douts, grads64)
    for fn in KERNEL_CASES[name]:
        monkeypatch.setattr(layers, fn, getattr(train_kernels, fn))
    outputs32 = case.forward(inputs32)
    grads32 = {k: v.astype(np.float32) for k, v in prefill.items()}
    case.backward(inputs32, outputs32, {k: v.astype(np.float32) for k, v in douts.items()}, grads32)
    for k, v in outputs32.items():
        assert v.dtype == np.float32, f"{name}: output {k} is {v.dtype}"
        np.testing.assert_allclose(v, outputs64[k], rtol=1e-5, atol=1e-5, err_msg=f"{name}: {k}")
    for k, v in grads32.items():
        assert v.dtype == np.float32, f"{name}: gradient d{k} is {v.dtype}"
        scale = max(1.0, float(np.abs(grads64[k]).max()))
        np.testing.assert_allclose(v, grads64[k], rtol=0, atol=1e-5 * scale, err_msg=f"{name}: d{k}")


def test_train_kernels_give_the_same_bits_on_any_thread_count(monkeypatch):
    """The fused kernels run on Numba's threads, whose count llmpy/threads.py changes during a run: every result
    (RMSNorm's weight gradient sums rows in fixed parts) must be bit-identical on one thread and on all, with
    each thread given many rows (PARALLEL_MIN lowered to 0), and on the one-thread path of small calls, which
    gives the caller's thread count back; and the parallel RMSNorm backward still equals the plain layer."""
    numba = pytest.importorskip("numba")
    from llmpy.llama import train_kernels

    rng = np.random.default_rng(9)
    B2, T2, NH, NKV, hs, H2 = 3, 40, 4, 2, 8, 24
    C2, KV = NH * hs, NKV * hs
    x, dy = _normal(rng, (B2, T2, C2), np.float32), _normal(rng, (B2, T2, C2), np.float32)
    q, k, v = _normal(rng, (B2, T2, C2), np.float32), _normal(rng, (B2, T2, KV), np.float32), \
        _normal(rng, (B2, T2, KV), np.float32)
    h1, h3, dh = (_normal(rng, (B2, T2, H2), np.float32, 3.0) for _ in range(3))
    w = (1.0 + 0.3 * rng.standard_normal(C2)).astype(np.float32)
    cos, sin = layers.rope_tables(hs, T2, THETA, np.float32)

    def run():
        out, rstd = np.empty_like(x), np.empty((B2, T2), np.float32)
        train_kernels.rmsnorm_forward(out, rstd, x, w, EPS)
        dx, dw = np.ones_like(x), np.ones_like(w)
        train_kernels.rmsnorm_backward(dx, dw, dy, x, w, rstd)
        rq = np.empty_like(q)
        train_kernels.rope_forward(rq, q, cos, sin)
        drq = np.ones_like(q)
        train_kernels.rope_backward(drq, dy, cos, sin)
        y, att = np.empty_like(q), np.empty((B2, NH, T2, T2), np.float32)
        train_kernels.attention_forward(y, att, rq, k, v, NH)
        dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
        train_kernels.attention_backward(dq, dk, dv, dy, rq, k, v, att, NH, accumulate=False,
                                         heads=np.empty_like(q))
        hb, d1, d3 = np.empty_like(h1), np.empty_like(h1), np.empty_like(h1)
        train_kernels.swiglu_forward(hb, h1, h3)
        train_kernels.swiglu_backward(d1, d3, dh, h1, h3, accumulate=False)
        return {"ln": out, "rstd": rstd, "dx": dx, "dw": dw, "rope": rq, "drope": drq, "y": y, "att": att,
                "dq": dq, "dk": dk, "dv": dv, "hb": hb, "dh1": d1, "dh3": d3}

    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        small = run()  # each call below PARALLEL_MIN: on one thread
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        monkeypatch.setattr(train_kernels, "PARALLEL_MIN", 0)
        every = run()
        numba.set_num_threads(1)
        one = run()
    finally:
        numba.set_num_threads(threads)
    for name, value in one.items():
        np.testing.assert_array_equal(every[name], value, err_msg=name)
        np.testing.assert_array_equal(small[name], value, err_msg=name)

    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    out64, rstd64 = np.empty_like(x64), np.empty((B2, T2))
    layers.rmsnorm_forward(out64, rstd64, x64, w.astype(np.float64), EPS)
    dx64, dw64 = np.ones_like(x64), np.ones(C2)
    layers.rmsnorm_backward(dx64, dw64, dy64, x64, w.astype(np.float64), rstd64)
    np.testing.assert_allclose(one["dw"], dw64, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(one["dx"], dx64, rtol=1e-5, atol=1e-5)
