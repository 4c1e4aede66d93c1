"""The fused CPU kernels (llmpy/gpt2/kernels.py) and BLAS accumulation against the plain layers."""

import math

import numpy as np
import pytest

from llmpy import fastmath
from llmpy.backend import matmul_acc
from llmpy.gpt2 import kernels, layers
from llmpy.gpt2.model import GPT2, GPT2Config, init_params
from llmpy.optim import AdamW, adamw_update_plain, clip_scale, global_norm

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_gelu_matches_plain(rng, scale):
    x = randn(rng, 2, 5, 96, scale=scale)
    x.flat[:4] = [0.0, -20.0, 20.0, 8.95]  # saturated tanh and the clamp's edge
    out_fused, out_plain = np.empty_like(x), np.empty_like(x)
    kernels.gelu_forward(out_fused, x)
    layers.gelu_forward(out_plain, x.astype(np.float64))
    assert out_fused.dtype == np.float32
    np.testing.assert_allclose(out_fused, out_plain, rtol=2e-6, atol=2e-6)
    dout = randn(rng, *x.shape)
    for accumulate in (True, False):
        d_fused = randn(rng, *x.shape)  # added into, or overwritten
        d_plain = d_fused.astype(np.float64) if accumulate else np.full(x.shape, np.nan)
        kernels.gelu_backward(d_fused, x, dout, accumulate=accumulate)
        layers.gelu_backward(d_plain, x.astype(np.float64), dout.astype(np.float64), accumulate=accumulate)
        np.testing.assert_allclose(d_fused, d_plain, rtol=1e-5, atol=2e-5 * scale ** 3)


@pytest.fixture(scope="module")
def elementwise():
    """The scalar float32 tanh and exp kernels mapped over an array, compiled as the kernels use them."""
    import numba

    @numba.njit(fastmath=True, error_model="numpy")
    def apply(which, x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = kernels._tanh(x[i]) if which == 0 else fastmath.exp_f32(x[i])
        return out
    return apply


def test_tanh_rational_is_accurate(elementwise):
    x = np.linspace(-12, 12, 200001).astype(np.float32)
    out = elementwise(0, x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.tanh(x.astype(np.float64)), rtol=0, atol=5e-7)
    assert np.all(np.abs(elementwise(0, np.array([-20.0, -9.0, 9.0, 20.0], np.float32))) == 1.0)


def test_layernorm_matches_plain(rng):
    B, T, C = 3, 7, 40
    inp = randn(rng, B, T, C, scale=3.0) + 1.5
    w, b = randn(rng, C), randn(rng, C)
    fused = [np.empty((B, T, C), np.float32), np.empty((B, T), np.float32), np.empty((B, T), np.float32)]
    plain = [np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))]
    kernels.layernorm_forward(*fused, inp, w, b)
    layers.layernorm_forward(*plain, inp.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    for f, p in zip(fused, plain):
        np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-5)
    dout = randn(rng, B, T, C)
    grads_fused = [randn(rng, B, T, C), randn(rng, C), randn(rng, C)]  # backward adds into these
    grads_plain = [g.astype(np.float64) for g in grads_fused]
    kernels.layernorm_backward(*grads_fused, dout, inp, w, fused[1], fused[2])
    layers.layernorm_backward(*grads_plain, dout.astype(np.float64), inp.astype(np.float64),
                              w.astype(np.float64), plain[1], plain[2])
    for f, p in zip(grads_fused, grads_plain):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-4)


def test_encoder_backward_matches_plain(rng):
    B, T, C, Vp, maxT = 3, 5, 8, 11, 7
    inp = rng.integers(0, 4, (B, T)).astype(np.int32)  # few ids: repeats must accumulate
    dout = randn(rng, B, T, C)
    dwte_f, dwpe_f = randn(rng, Vp, C), randn(rng, maxT, C)
    dwte_p, dwpe_p = dwte_f.astype(np.float64), dwpe_f.astype(np.float64)
    kernels.encoder_backward(dwte_f, dwpe_f, dout, inp)
    layers.encoder_backward(dwte_p, dwpe_p, dout.astype(np.float64), inp)
    np.testing.assert_allclose(dwte_f, dwte_p, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dwpe_f, dwpe_p, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("accumulate", [True, False])
def test_attention_fused_matches_plain(rng, accumulate):
    B, T, C, NH = 2, 9, 24, 3
    inp = randn(rng, B, T, 3 * C, scale=2.0)
    out_f, att_f = np.empty((B, T, C), np.float32), np.empty((B, NH, T, T), np.float32)
    out_p, att_p = np.empty((B, T, C)), np.empty((B, NH, T, T))
    kernels.attention_forward(out_f, att_f, inp, NH)
    layers.attention_forward(out_p, att_p, inp.astype(np.float64), NH)
    assert out_f.dtype == np.float32
    np.testing.assert_allclose(att_f, att_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_f, out_p, rtol=1e-5, atol=1e-5)
    assert np.all(att_f[..., np.triu(np.ones((T, T), bool), k=1)] == 0.0)  # causal: exactly zero
    dout = randn(rng, B, T, C)
    dinp_f = randn(rng, B, T, 3 * C)  # backward adds into dinp, or overwrites it
    dinp_p = dinp_f.astype(np.float64) if accumulate else np.zeros((B, T, 3 * C))
    kernels.attention_backward(dinp_f, dout, inp, att_f, NH, scratch=np.empty_like(att_f), accumulate=accumulate)
    layers.attention_backward(dinp_p, dout.astype(np.float64), inp.astype(np.float64), att_p, NH)
    np.testing.assert_allclose(dinp_f, dinp_p, rtol=1e-4, atol=1e-5)


def test_crossentropy_fused_matches_plain(rng):
    B, T, V, Vp = 2, 5, 67, 128
    logits = randn(rng, B, T, Vp, scale=5.0)
    logits[..., V:] = 1e3  # padded columns must not matter, however large
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    losses, lse = np.empty((B, T), np.float32), np.empty((B, T), np.float32)
    kernels.crossentropy_forward(losses, lse, logits, targets, V)
    ref_losses, probs = np.empty((B, T)), np.empty((B, T, Vp))
    layers.softmax_crossentropy_forward(ref_losses, probs, logits.astype(np.float64), targets, V)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    dloss = 1.0 / (B * T)
    dlogits = logits.copy()
    kernels.crossentropy_backward_inplace(dlogits, lse, targets, V, dloss)
    ref = np.zeros((B, T, Vp))
    layers.crossentropy_softmax_backward(ref, np.full((B, T), dloss), probs, targets, V)
    np.testing.assert_allclose(dlogits, ref, rtol=1e-5, atol=1e-7)
    assert np.all(dlogits[..., V:] == 0.0)


def test_exp_is_accurate(elementwise):
    x = np.concatenate([np.linspace(-87, 88, 1_000_001), [0.0, -1e-30, 1e-30]]).astype(np.float32)
    out = elementwise(1, x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.exp(x.astype(np.float64)), rtol=5e-7, atol=0)
    # clamped outside [-87, 88]: tiny, finite, never NaN
    far = elementwise(1, np.array([-1e4, -200.0, 200.0], np.float32))
    assert 0 < far[0] == far[1] < 1e-37 and np.isfinite(far[2])


def test_adamw_fused_matches_plain_and_zeroes_grads(rng):
    n = 1000
    params, grads = randn(rng, n), randn(rng, n)
    opt = AdamW(n, lr=1e-2, weight_decay=0.1, decay_ranges=[(100, 600)])
    p_ref = params.astype(np.float64)
    m_ref, v_ref = np.zeros(n), np.zeros(n)
    for t in range(1, 4):
        g = grads.copy()
        opt.step(params, g, grad_scale=0.5, zero_grads=True)
        assert np.all(g == 0.0)
        bc1, bc2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        for lo, hi, wd in ((0, 100, 0.0), (100, 600, 0.1), (600, n, 0.0)):
            adamw_update_plain(p_ref[lo:hi], grads[lo:hi].astype(np.float64), m_ref[lo:hi], v_ref[lo:hi], 1e-2,
                               0.9, 0.999, 1e-8, wd, bc1, bc2, grad_scale=0.5)
    np.testing.assert_allclose(params, p_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(opt.m, m_ref, rtol=1e-5, atol=1e-7)


def test_global_norm_and_clip(rng):
    g = randn(rng, 12345)
    assert global_norm(g) == pytest.approx(math.sqrt(float(np.sum(g.astype(np.float64) ** 2))), rel=1e-12)
    assert clip_scale(2.0, 1.0) == 0.5
    assert clip_scale(0.5, 1.0) == 1.0
    assert clip_scale(float("nan"), 1.0) == 1.0


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_acc_layouts(rng, ta, tb):
    M, K, N = 13, 29, 7
    a = randn(rng, K, M).T if ta else randn(rng, M, K)
    b = randn(rng, N, K).T if tb else randn(rng, K, N)
    c = randn(rng, M, N)
    product = a.astype(np.float64) @ b.astype(np.float64)
    expected = c.astype(np.float64) + product
    address = c.ctypes.data
    matmul_acc(c, a, b)
    assert c.ctypes.data == address
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)
    c.fill(np.nan)  # overwritten, never read
    matmul_acc(c, a, b, accumulate=False)
    np.testing.assert_allclose(c, product, rtol=1e-5, atol=1e-5)


def test_model_fused_matches_plain(rng):
    cfg = GPT2Config(max_seq_len=16, vocab_size=67, padded_vocab_size=128, num_layers=2, num_heads=3, channels=48)
    params = init_params(cfg, rng)
    params += randn(rng, params.size, scale=0.01)  # nonzero biases, non-unit layernorm weights
    x = rng.integers(0, 67, (2, 11)).astype(np.int32)
    y = rng.integers(0, 67, (2, 11)).astype(np.int32)
    results = []
    for fused in (True, False):
        model = GPT2(cfg, params.copy(), fused=fused)
        loss = model.forward(x, y)
        logits = model.logits().copy()
        model.zero_grad()
        model.backward()
        results.append((loss, logits, model.grads.copy()))
    (loss_f, logits_f, grads_f), (loss_p, logits_p, grads_p) = results
    assert loss_f == pytest.approx(loss_p, rel=1e-5)
    np.testing.assert_allclose(logits_f, logits_p, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads_f, grads_p, rtol=1e-3, atol=1e-6)
