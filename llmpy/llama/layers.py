"""Llama's layers as forward/backward pairs: the training math of llama2.c's model.py written over arrays.

Conventions, as in llmpy/gpt2/layers.py (whose linear, residual and softmax + cross-entropy are used here,
not copied):
- outputs are preallocated arrays passed in first and written (`out[...] = ...`);
- backward functions ADD INTO their gradient arguments, so a tensor used twice (the residual stream, a tied
  embedding) collects both contributions; `accumulate=False` writes an input gradient with a single source
  instead, which saves zeroing its buffer first (parameter gradients are always added into);
- shapes use llm.c's letters: B batch, T time, C channels (dim), NH query heads, NKV key/value heads,
  hs head size, KV = NKV * hs, H ffn hidden size, V vocab.

Every function is dtype-generic (float32 in, float32 out; float64 in the tests) and takes its array module
(NumPy or CuPy) from its inputs. Constants are Python floats, so they never upcast float32 arrays.

These are the plain, readable versions, the source of truth for the Llama math: the fast inference kernels
(llmpy/llama/kernels.py) and the fused training kernels are tested against them.
Not handled: biases (Llama has none), RoPE scaling, attention windows, dropout.
"""

import math

import numpy as np

from llmpy.backend import get_array_module, scatter_add
from llmpy.gpt2.layers import (  # noqa: F401  (re-exported: one implementation for both families)
    causal_softmax,
    crossentropy_softmax_backward,
    matmul_backward,
    matmul_forward,
    residual_backward,
    residual_forward,
    softmax_crossentropy_forward,
)

# ----------------------------------------------------------------------------
# token embedding (no position embedding: positions enter through RoPE)


def embedding_forward(out, inp, wte):
    # out is (B,T,C), inp is (B,T) int32 token ids, wte is (V,C)
    xp = get_array_module(out)
    xp.take(wte, inp, axis=0, out=out)  # out[b,t] = wte[inp[b,t]]


def embedding_backward(dwte, dout, inp):
    # dwte is (V,C), dout is (B,T,C), inp is (B,T)
    # forward: out[b,t] = wte[inp[b,t]]; a token id may repeat, so scatter-add
    B, T, C = dout.shape
    scatter_add(dwte, inp.reshape(-1), dout.reshape(B * T, C))


# ----------------------------------------------------------------------------
# RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight


def rmsnorm_forward(out, rstd, inp, weight, eps):
    # out, inp are (B,T,C); rstd is (B,T) (cached for backward); weight is (C,)
    xp = get_array_module(inp)
    rstd[...] = 1.0 / xp.sqrt((inp * inp).mean(axis=-1) + eps)
    out[...] = inp * rstd[..., None] * weight


def rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, accumulate=True):
    # dinp, dout, inp are (B,T,C); dweight, weight are (C,); rstd is (B,T)
    norm = inp * rstd[..., None]                                # recomputed, not stored
    # forward: out = norm * weight
    dweight += (dout * norm).sum(axis=(0, 1))
    dnorm = dout * weight                                       # (B,T,C)
    # norm = x * rstd with rstd = (mean(x^2) + eps)^(-1/2): d rstd / dx = -rstd^3 x / C, so
    # dx = rstd * (dnorm - norm * mean(dnorm * norm))
    dx = (dnorm - norm * (dnorm * norm).mean(axis=-1, keepdims=True)) * rstd[..., None]
    if accumulate:
        dinp += dx
    else:
        dinp[...] = dx


# ----------------------------------------------------------------------------
# linear without bias: out = inp @ weight.T, weight stored (OC,C) as in PyTorch and llama2.c


def linear_forward(out, inp, weight):
    # out is (B,T,OC), inp is (B,T,C), weight is (OC,C)
    matmul_forward(out, inp, weight, None)


def linear_backward(dinp, dweight, dout, inp, weight, accumulate=True):
    # dinp, inp are (B,T,C); dweight, weight are (OC,C); dout is (B,T,OC)
    matmul_backward(dinp, dweight, None, dout, inp, weight, accumulate)


# ----------------------------------------------------------------------------
# RoPE, llama2.c / Meta layout: within each head, the adjacent pair (2j, 2j+1) is one complex number,
# turned by the angle pos * theta^(-2j/hs)


def rope_tables(head_size, T, theta, dtype):
    """(cos, sin), each (T, hs/2): the angles in float64, then cast (llama2.c's freqs_cis)."""
    freqs = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)  # (hs/2,)
    angles = np.outer(np.arange(T, dtype=np.float64), freqs)                          # (T, hs/2)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def _pairs(x, hs):
    # x is (B,T,n*hs) -> (B,T,n,hs/2,2), a view: [..., 0] the real parts, [..., 1] the imaginary parts
    B, T, D = x.shape
    return x.reshape(B, T, D // hs, hs // 2, 2)


def rope_forward(out, inp, cos, sin):
    # out, inp are (B,T,n*hs), n heads of hs side by side (out may be inp: in place); cos, sin are (T,hs/2)
    # for positions 0..T-1
    T, half = inp.shape[1], cos.shape[1]
    x, o = _pairs(inp, 2 * half), _pairs(out, 2 * half)
    c, s = cos[:T, None, :], sin[:T, None, :]                   # (T,1,hs/2), broadcast over B and heads
    x0, x1 = x[..., 0], x[..., 1]                               # (B,T,n,hs/2)
    real = x0 * c - x1 * s                                      # (x0 + i x1) * (c + i s)
    imag = x0 * s + x1 * c
    o[..., 0] = real
    o[..., 1] = imag


def rope_backward(dinp, dout, cos, sin, accumulate=True):
    # dinp, dout are (B,T,n*hs) (dinp may be dout when accumulate=False: in place); cos, sin are (T,hs/2)
    T, half = dout.shape[1], cos.shape[1]
    d, g = _pairs(dout, 2 * half), _pairs(dinp, 2 * half)
    c, s = cos[:T, None, :], sin[:T, None, :]
    d0, d1 = d[..., 0], d[..., 1]
    # forward: real = x0 c - x1 s, imag = x0 s + x1 c; a rotation, so the gradient turns back by -angle
    dx0 = d0 * c + d1 * s
    dx1 = d1 * c - d0 * s
    if accumulate:
        g[..., 0] += dx0
        g[..., 1] += dx1
    else:
        g[..., 0] = dx0
        g[..., 1] = dx1


# ----------------------------------------------------------------------------
# causal grouped-query self-attention: query head h reads key/value head h // (NH/NKV), as llama2.c's
# repeat_kv; the groups are batched so that no key or value is ever copied


def _heads(x, NKV, G):
    # x is (B,T,NKV*G*hs) -> (B,NKV,G,T,hs), a view: [:, j, g] is query head j*G + g (or kv head j when G=1)
    B, T, D = x.shape
    return x.reshape(B, T, NKV, G, D // (NKV * G)).transpose(0, 2, 3, 1, 4)


def attention_forward(out, att, q, k, v, NH):
    # out, q are (B,T,C) (q after RoPE); k, v are (B,T,KV) (k after RoPE); att is (B,NH,T,T), the softmaxed
    # weights (cached for backward, and the scratch for the scores)
    xp = get_array_module(q)
    B, T, C = q.shape
    hs = C // NH
    NKV = k.shape[-1] // hs
    G = NH // NKV                                               # query heads per key/value head
    q5, k5, v5 = _heads(q, NKV, G), _heads(k, NKV, 1), _heads(v, NKV, 1)  # (B,NKV,G|1,T,hs)
    att5 = att.reshape(B, NKV, G, T, T)                         # a view: att is contiguous
    xp.matmul(q5, k5.swapaxes(-1, -2), out=att5)                # preatt, k broadcast over the group
    causal_softmax(att, hs)
    xp.matmul(att5, v5, out=_heads(out, NKV, G))                # y (B,NKV,G,T,hs), heads side by side in out


def attention_backward(dq, dk, dv, dout, q, k, v, att, NH, scratch=None, accumulate=True):
    # dq, q, dout are (B,T,C); dk, dv, k, v are (B,T,KV); att is (B,NH,T,T); scratch, if given, is a
    # (B,NH,T,T) buffer for the score gradients (else one is allocated)
    xp = get_array_module(q)
    B, T, C = q.shape
    hs = C // NH
    NKV = k.shape[-1] // hs
    G = NH // NKV
    q5, k5, v5 = _heads(q, NKV, G), _heads(k, NKV, 1), _heads(v, NKV, 1)
    dq5, dk5, dv5 = _heads(dq, NKV, G), _heads(dk, NKV, 1), _heads(dv, NKV, 1)  # views: writes go into dq, dk, dv
    dy5 = _heads(dout, NKV, G)                                  # (B,NKV,G,T,hs)
    att5 = att.reshape(B, NKV, G, T, T)
    datt = xp.empty_like(att) if scratch is None else scratch
    datt5 = datt.reshape(B, NKV, G, T, T)
    # forward: y = att @ v, v shared by the G query heads of a group: their gradients sum into dv
    xp.matmul(dy5, v5.swapaxes(-1, -2), out=datt5)             # (B,NKV,G,T,T)
    _group_sum(dv5, att5.swapaxes(-1, -2) @ dy5, accumulate)
    # forward: att = softmax(preatt) along the last axis, so
    # dpreatt = att * (datt - sum(datt * att)); masked entries have att = 0 and get 0
    rowdot = xp.einsum("bhij,bhij->bhi", datt, att)[..., None]  # (B,NH,T,1)
    datt -= rowdot
    datt *= att
    datt *= 1.0 / math.sqrt(hs)                                 # now dpreatt
    # forward: preatt = q @ k.T * scale, k shared by the group as v is
    if accumulate:
        dq5 += datt5 @ k5
    else:
        xp.matmul(datt5, k5, out=dq5)
    _group_sum(dk5, datt5.swapaxes(-1, -2) @ q5, accumulate)


def _group_sum(dkv5, per_head, accumulate):
    # dkv5 is (B,NKV,1,T,hs); per_head is (B,NKV,G,T,hs), one gradient per query head of each group
    total = per_head.sum(axis=2, keepdims=True) if per_head.shape[2] > 1 else per_head
    if accumulate:
        dkv5 += total
    else:
        dkv5[...] = total


# ----------------------------------------------------------------------------
# SwiGLU: out = silu(h1) * h3, where h1 = w1 x (the gate) and h3 = w3 x; the block is w2(out)


def _sigmoid(xp, x):
    return 0.5 * (1.0 + xp.tanh(0.5 * x))                       # = 1 / (1 + exp(-x)), without overflow


def swiglu_forward(out, h1, h3):
    # out, h1, h3 are (B,T,H)
    xp = get_array_module(h1)
    out[...] = h1 * _sigmoid(xp, h1) * h3


def swiglu_backward(dh1, dh3, dout, h1, h3, accumulate=True):
    # dh1, dh3, dout, h1, h3 are (B,T,H)
    xp = get_array_module(h1)
    sig = _sigmoid(xp, h1)
    silu = h1 * sig
    # forward: out = silu(h1) * h3, silu(x) = x sigmoid(x), silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))
    d1 = dout * h3 * sig * (1.0 + h1 * (1.0 - sig))
    d3 = dout * silu
    if accumulate:
        dh1 += d1
        dh3 += d3
    else:
        dh1[...] = d1
        dh3[...] = d3
