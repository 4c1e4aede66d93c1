"""Each GPT-2 layer of llmpy.gpt2.layers against PyTorch (float64 forward and autograd) and finite differences.

The layers follow llm.c: outputs are preallocated and written, and backward ADDS INTO its gradient arguments,
so every backward here runs on gradients pre-filled with random numbers and the test subtracts them again.
Every layer is described once in CASES (inputs, the call of its forward and backward, the torch version), and
four checks run over all of them: forward vs torch, backward vs torch autograd (float64, ~1e-10), backward vs
central finite differences (float64, no torch needed), float32 in -> float32 out.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import import_reference

from llmpy.gpt2 import layers

B, T, C, NH, OC = 2, 5, 12, 3, 7
MAXT = 8            # T < maxT: the encoder must leave wpe rows T.. alone
V, VP = 13, 16      # real and padded vocab for the encoder and the cross-entropy
FD_STEP = 1e-6      # central differences in float64: error ~ step^2 (truncation) + 1e-16/step (rounding)
FD_TOL = 1e-6
FD_COORDS = 6       # random coordinates checked per input
AUTOGRAD_RTOL = 1e-10


@dataclass
class Case:
    name: str
    make: Callable       # (rng, dtype) -> dict of numpy inputs
    forward: Callable    # (inputs) -> dict of numpy outputs, calling llmpy's forward
    backward: Callable   # (inputs, outputs, douts, grads) -> None, calling llmpy's backward (adds into grads)
    reference: Callable  # (ref module, dict of torch inputs) -> dict of torch outputs (same keys as forward's)
    diff_inputs: tuple   # inputs that get a gradient
    diff_outputs: tuple  # outputs that receive an upstream gradient


def _tokens(rng, n_vocab, shape):
    return rng.integers(0, n_vocab, size=shape).astype(np.int32)


# --- encoder -----------------------------------------------------------------------------------------

def _encoder_make(rng, dtype):
    inp = _tokens(rng, 4, (B, T))  # only 4 distinct ids over B*T = 10 positions: repeats are certain
    inp[0, 0] = V - 1  # the last real token
    return {"inp": inp, "wte": rng.standard_normal((VP, C)).astype(dtype),
            "wpe": rng.standard_normal((MAXT, C)).astype(dtype)}


def _encoder_forward(x):
    out = np.empty((B, T, C), dtype=x["wte"].dtype)
    layers.encoder_forward(out, x["inp"], x["wte"], x["wpe"])
    return {"out": out}


def _encoder_backward(x, o, d, g):
    layers.encoder_backward(g["wte"], g["wpe"], d["out"], x["inp"])


def _encoder_reference(ref, t):
    return {"out": ref.encoder(t["inp"].long(), t["wte"], t["wpe"])}


# --- layernorm ---------------------------------------------------------------------------------------

def _layernorm_make(rng, dtype):
    return {"inp": (rng.standard_normal((B, T, C)) * 3.0 + 0.5).astype(dtype),
            "weight": (1.0 + 0.3 * rng.standard_normal(C)).astype(dtype),
            "bias": rng.standard_normal(C).astype(dtype)}


def _layernorm_forward(x):
    dtype = x["inp"].dtype
    out, mean, rstd = np.empty((B, T, C), dtype), np.empty((B, T), dtype), np.empty((B, T), dtype)
    layers.layernorm_forward(out, mean, rstd, x["inp"], x["weight"], x["bias"])
    return {"out": out, "mean": mean, "rstd": rstd}


def _layernorm_backward(x, o, d, g):
    layers.layernorm_backward(g["inp"], g["weight"], g["bias"], d["out"], x["inp"], x["weight"], o["mean"], o["rstd"])


def _layernorm_reference(ref, t):
    inp = t["inp"]
    var = inp.var(dim=-1, unbiased=False)
    return {"out": ref.layernorm(inp, t["weight"], t["bias"]), "mean": inp.mean(dim=-1),
            "rstd": 1.0 / (var + ref.LAYERNORM_EPS).sqrt()}


# --- matmul (with and without bias) ------------------------------------------------------------------

def _matmul_make(rng, dtype):
    return {"inp": rng.standard_normal((B, T, C)).astype(dtype), "weight": rng.standard_normal((OC, C)).astype(dtype),
            "bias": rng.standard_normal(OC).astype(dtype)}


def _matmul_nobias_make(rng, dtype):
    x = _matmul_make(rng, dtype)
    del x["bias"]
    return x


def _matmul_forward(x):
    out = np.empty((B, T, OC), dtype=x["inp"].dtype)
    layers.matmul_forward(out, x["inp"], x["weight"], x.get("bias"))
    return {"out": out}


def _matmul_backward(x, o, d, g):
    layers.matmul_backward(g["inp"], g["weight"], g.get("bias"), d["out"], x["inp"], x["weight"])


def _matmul_reference(ref, t):
    return {"out": ref.matmul(t["inp"], t["weight"], t.get("bias"))}


# --- attention ---------------------------------------------------------------------------------------

def _attention_make(rng, dtype):
    return {"inp": (2.0 * rng.standard_normal((B, T, 3 * C))).astype(dtype)}  # big enough for peaked softmaxes


def _attention_forward(x):
    dtype = x["inp"].dtype
    out, att = np.empty((B, T, C), dtype), np.full((B, NH, T, T), np.nan, dtype)  # NaN: every entry must be set
    layers.attention_forward(out, att, x["inp"], NH)
    return {"out": out, "att": att}


def _attention_backward(x, o, d, g):
    layers.attention_backward(g["inp"], d["out"], x["inp"], o["att"], NH)


def _attention_reference(ref, t):
    out, att = ref.attention(t["inp"], NH, return_att=True)
    return {"out": out, "att": att}


# --- gelu, residual ----------------------------------------------------------------------------------

def _gelu_make(rng, dtype):
    return {"inp": (2.0 * rng.standard_normal((B, T, 4 * C))).astype(dtype)}


def _gelu_forward(x):
    out = np.empty_like(x["inp"])
    layers.gelu_forward(out, x["inp"])
    return {"out": out}


def _gelu_backward(x, o, d, g):
    layers.gelu_backward(g["inp"], x["inp"], d["out"])


def _residual_make(rng, dtype):
    return {"inp1": rng.standard_normal((B, T, C)).astype(dtype), "inp2": rng.standard_normal((B, T, C)).astype(dtype)}


def _residual_forward(x):
    out = np.empty_like(x["inp1"])
    layers.residual_forward(out, x["inp1"], x["inp2"])
    return {"out": out}


def _residual_backward(x, o, d, g):
    layers.residual_backward(g["inp1"], g["inp2"], d["out"])


# --- fused softmax + cross-entropy over a padded vocabulary ------------------------------------------

def _crossentropy_make(rng, dtype):
    logits = 3.0 * rng.standard_normal((B, T, VP))
    logits[..., V:] += 10.0  # large padded logits: they would dominate the softmax if they leaked in
    targets = _tokens(rng, V, (B, T))
    targets[0, 0], targets[1, 1] = 0, V - 1
    return {"logits": logits.astype(dtype), "targets": targets}


def _crossentropy_forward(x):
    dtype = x["logits"].dtype
    losses, probs = np.empty((B, T), dtype), np.full((B, T, VP), np.nan, dtype)
    layers.softmax_crossentropy_forward(losses, probs, x["logits"], x["targets"], V)
    return {"losses": losses, "probs": probs}


def _crossentropy_backward(x, o, d, g):
    layers.crossentropy_softmax_backward(g["logits"], d["losses"], o["probs"], x["targets"], V)


def _crossentropy_reference(ref, t):
    import torch

    logits = t["logits"]
    probs = torch.zeros_like(logits)
    probs[..., :V] = torch.softmax(logits[..., :V], dim=-1)
    return {"losses": ref.crossentropy_losses(logits, t["targets"].long(), V), "probs": probs}


CASES = [
    Case("encoder", _encoder_make, _encoder_forward, _encoder_backward, _encoder_reference,
         ("wte", "wpe"), ("out",)),
    Case("layernorm", _layernorm_make, _layernorm_forward, _layernorm_backward, _layernorm_reference,
         ("inp", "weight", "bias"), ("out",)),
    Case("matmul", _matmul_make, _matmul_forward, _matmul_backward, _matmul_reference,
         ("inp", "weight", "bias"), ("out",)),
    Case("matmul_nobias", _matmul_nobias_make, _matmul_forward, _matmul_backward, _matmul_reference,
         ("inp", "weight"), ("out",)),
    Case("attention", _attention_make, _attention_forward, _attention_backward, _attention_reference,
         ("inp",), ("out",)),
    Case("gelu", _gelu_make, _gelu_forward, _gelu_backward, lambda ref, t: {"out": ref.gelu(t["inp"])},
         ("inp",), ("out",)),
    Case("residual", _residual_make, _residual_forward, _residual_backward,
         lambda ref, t: {"out": t["inp1"] + t["inp2"]}, ("inp1", "inp2"), ("out",)),
    Case("crossentropy", _crossentropy_make, _crossentropy_forward, _crossentropy_backward, _crossentropy_reference,
         ("logits",), ("losses",)),
]
CASE_IDS = [c.name for c in CASES]


def _douts(case, outputs, rng):
    return {k: rng.standard_normal(outputs[k].shape).astype(outputs[k].dtype) for k in case.diff_outputs}


def _run_backward(case, inputs, rng):
    """Forward, then backward into gradients pre-filled with noise. Returns (douts, prefill, grads - prefill)."""
    outputs = case.forward(inputs)
    douts = _douts(case, outputs, rng)
    prefill = {k: rng.standard_normal(inputs[k].shape).astype(inputs[k].dtype) for k in case.diff_inputs}
    grads = {k: v.copy() for k, v in prefill.items()}
    case.backward(inputs, outputs, douts, grads)
    return douts, prefill, grads, {k: grads[k] - prefill[k] for k in case.diff_inputs}


def _objective(case, inputs, douts):
    outputs = case.forward(inputs)
    return sum(float(np.sum(outputs[k] * douts[k])) for k in case.diff_outputs)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_torch_float64(case):
    torch = pytest.importorskip("torch")
    ref = import_reference("gpt2_torch")
    inputs = case.make(np.random.default_rng(1), np.float64)
    outputs = case.forward(inputs)
    expected = case.reference(ref, {k: torch.from_numpy(v) for k, v in inputs.items()})
    assert set(expected) == set(outputs)
    for k, v in outputs.items():
        np.testing.assert_allclose(v, expected[k].numpy(), rtol=1e-12, atol=1e-12, err_msg=f"{case.name}: {k}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_matches_torch_autograd_float64(case):
    torch = pytest.importorskip("torch")
    ref = import_reference("gpt2_torch")
    rng = np.random.default_rng(2)
    inputs = case.make(rng, np.float64)
    douts, _, _, analytic = _run_backward(case, inputs, rng)
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
    douts, _, _, analytic = _run_backward(case, inputs, rng)
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
    rng64, rng32 = np.random.default_rng(4), np.random.default_rng(4)
    inputs64 = case.make(rng64, np.float64)
    inputs32 = case.make(rng32, np.float32)
    douts32, _, grads32, analytic32 = _run_backward(case, inputs32, rng32)
    outputs32 = case.forward(inputs32)
    outputs64 = case.forward(inputs64)
    for k, v in outputs32.items():
        assert v.dtype == np.float32, f"{case.name}: output {k} is {v.dtype}"
        np.testing.assert_allclose(v, outputs64[k], rtol=1e-4, atol=1e-5, err_msg=f"{case.name}: {k}")
    for k, v in grads32.items():
        assert v.dtype == np.float32, f"{case.name}: gradient d{k} is {v.dtype}"
    # the float32 backward agrees with the float64 one on the same (float32-representable) numbers
    inputs64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in inputs32.items()}
    outputs64 = case.forward(inputs64)
    grads64 = {k: np.zeros(inputs64[k].shape) for k in case.diff_inputs}
    case.backward(inputs64, outputs64, {k: v.astype(np.float64) for k, v in douts32.items()}, grads64)
    for k in case.diff_inputs:
        scale = max(1.0, float(np.abs(grads64[k]).max()))
        np.testing.assert_allclose(analytic32[k], grads64[k], rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=f"{case.name}: d{k}")


# --- properties the generic checks do not pin down ---------------------------------------------------

def test_attention_weights_are_causal_and_normalized():
    x = _attention_make(np.random.default_rng(5), np.float64)
    att = _attention_forward(x)["att"]
    above = np.triu(np.ones((T, T), dtype=bool), k=1)
    assert np.all(att[..., above] == 0.0), "attention to future positions must be exactly 0"
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


def test_crossentropy_padding_never_matters():
    rng = np.random.default_rng(6)
    x = _crossentropy_make(rng, np.float64)
    out = _crossentropy_forward(x)
    assert np.all(out["probs"][..., V:] == 0.0), "padded columns must get probability exactly 0"
    x2 = dict(x, logits=x["logits"].copy())
    x2["logits"][..., V:] = rng.standard_normal((B, T, VP - V)) * 100.0
    np.testing.assert_array_equal(_crossentropy_forward(x2)["losses"], out["losses"])
    _, prefill, grads, _ = _run_backward(_case("crossentropy"), x, rng)
    np.testing.assert_array_equal(grads["logits"][..., V:], prefill["logits"][..., V:])


def test_encoder_leaves_unused_rows_alone():
    rng = np.random.default_rng(7)
    x = _encoder_make(rng, np.float64)
    _, prefill, grads, _ = _run_backward(_case("encoder"), x, rng)
    unused = np.setdiff1d(np.arange(VP), x["inp"])
    np.testing.assert_array_equal(grads["wte"][unused], prefill["wte"][unused])
    np.testing.assert_array_equal(grads["wpe"][T:], prefill["wpe"][T:])


def _case(name):
    return next(c for c in CASES if c.name == name)
