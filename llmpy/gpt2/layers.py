"""GPT-2's layers as forward/backward pairs, llm.c's train_gpt2.c written over arrays.

Conventions, as in llm.c:
- outputs are preallocated arrays passed in first and written (`out[...] = ...`);
- backward functions ADD INTO their gradient arguments (`dinp += ...`), so a tensor used twice
  (the residual stream, the tied wte) collects both contributions; callers zero them first.
  Where an input gradient has a single source, `accumulate=False` writes it instead, which saves
  zeroing the buffer first (parameter gradients are always added into);
- shapes use llm.c's letters: B batch, T time, C channels, NH heads, hs head size, OC output
  channels, V vocab, Vp padded vocab.

Every function is dtype-generic: float32 in, float32 out; float64 in (the tests), float64 out.
Constants are Python floats so they never upcast float32 arrays. The array module (NumPy or CuPy)
comes from the inputs.

These are the plain, readable versions. llmpy/gpt2/kernels.py has fused CPU variants of the
memory-bound ones, tested against these.
"""

import math

import numpy as np

from llmpy.backend import get_array_module, matmul_acc, scatter_add

LN_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBE = 0.044715


# ----------------------------------------------------------------------------
# encoder: token embedding + position embedding

def encoder_forward(out, inp, wte, wpe):
    # out is (B,T,C), inp is (B,T) int32 token ids, wte is (Vp,C), wpe is (maxT,C)
    xp = get_array_module(out)
    T = inp.shape[1]
    xp.take(wte, inp, axis=0, out=out)  # out[b,t] = wte[inp[b,t]]
    out += wpe[:T]                      # broadcast over B


def encoder_backward(dwte, dwpe, dout, inp):
    # dwte is (Vp,C), dwpe is (maxT,C), dout is (B,T,C), inp is (B,T)
    # forward: out[b,t] = wte[inp[b,t]] + wpe[t]; a token id may repeat, so scatter-add
    B, T, C = dout.shape
    scatter_add(dwte, inp.reshape(-1), dout.reshape(B * T, C))
    dwpe[:T] += dout.sum(axis=0)


# ----------------------------------------------------------------------------
# layernorm

def layernorm_forward(out, mean, rstd, inp, weight, bias, eps=LN_EPS):
    # out, inp are (B,T,C); mean, rstd are (B,T) (cached for backward); weight, bias are (C,)
    xp = get_array_module(inp)
    mean[...] = inp.mean(axis=-1)
    xshift = inp - mean[..., None]                              # (B,T,C)
    var = (xshift * xshift).mean(axis=-1)                       # (B,T), biased variance
    rstd[...] = 1.0 / xp.sqrt(var + eps)
    out[...] = xshift * rstd[..., None] * weight + bias


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    # dinp, dout, inp are (B,T,C); dweight, dbias, weight are (C,); mean, rstd are (B,T)
    norm = (inp - mean[..., None]) * rstd[..., None]           # recomputed, not stored
    # forward: out = norm * weight + bias
    dbias += dout.sum(axis=(0, 1))
    dweight += (dout * norm).sum(axis=(0, 1))
    dnorm = dout * weight                                       # (B,T,C)
    # norm = (x - mean) * rstd: the mean and rstd terms give the two projections subtracted here
    dinp += (dnorm - dnorm.mean(axis=-1, keepdims=True)
             - norm * (dnorm * norm).mean(axis=-1, keepdims=True)) * rstd[..., None]


# ----------------------------------------------------------------------------
# matmul with bias: a linear layer, weight stored (OC,C) as in PyTorch and llm.c

def matmul_forward(out, inp, weight, bias):
    # out is (B,T,OC), inp is (B,T,C), weight is (OC,C), bias is (OC,) or None
    xp = get_array_module(out)
    C = inp.shape[-1]
    OC = weight.shape[0]
    out2, inp2 = out.reshape(-1, OC), inp.reshape(-1, C)        # one GEMM over all B*T rows
    if bias is None:
        xp.matmul(inp2, weight.T, out=out2)
    elif xp is np:
        # bias rows first, then the GEMM adds onto them (beta=1): BLAS writes C once either way
        # (beta=0 starts with a zeroing pass), so the bias costs no extra pass over out
        out2[...] = bias
        matmul_acc(out2, inp2, weight.T)
    else:
        xp.matmul(inp2, weight.T, out=out2)
        out2 += bias


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, accumulate=True):
    # dinp, inp are (B,T,C); dweight, weight are (OC,C); dbias is (OC,) or None; dout is (B,T,OC)
    C = inp.shape[-1]
    OC = weight.shape[0]
    dout2 = dout.reshape(-1, OC)                                # (B*T,OC)
    # forward: out = inp @ weight.T + bias
    matmul_acc(dinp.reshape(-1, C), dout2, weight, accumulate)  # dinp += dout @ weight
    matmul_acc(dweight, dout2.T, inp.reshape(-1, C))            # dweight += dout.T @ inp
    if dbias is not None:
        # the column sums as a vector-matrix product: BLAS gemv reads dout once, with no temporary
        # of dout's size (a plain .sum(axis=0) ran 2x slower here)
        xp = get_array_module(dout)
        dbias += xp.ones(dout2.shape[0], dtype=dout2.dtype) @ dout2


# ----------------------------------------------------------------------------
# causal multi-head self-attention

def _split_heads(x, NH):
    # x is (B,T,C) -> (B,NH,T,hs), a view
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def causal_softmax(att, hs):
    # att (..., T, T) holds the scores q.k of query position t (rows) and key position t2 (columns); in place,
    # each row becomes softmax(scores / sqrt(hs)) over the keys at or before its query (later ones get 0)
    xp = get_array_module(att)
    T = att.shape[-1]
    att *= 1.0 / math.sqrt(hs)
    future = xp.triu(xp.ones((T, T), dtype=bool), k=1)          # key position after query position
    att[..., future] = -xp.inf
    att -= att.max(axis=-1, keepdims=True)                      # the diagonal is never masked
    xp.exp(att, out=att)
    att /= att.sum(axis=-1, keepdims=True)                      # masked entries are exactly 0


def attention_forward(out, att, inp, NH):
    # out is (B,T,C); att is (B,NH,T,T) softmaxed weights (cached for backward, and used as the
    # scratch for the pre-softmax scores); inp is (B,T,3C): query, key, value side by side along
    # the last axis (llm.c's qkv layout)
    xp = get_array_module(inp)
    B, T, C3 = inp.shape
    C = C3 // 3
    hs = C // NH
    q = _split_heads(inp[:, :, :C], NH)                         # (B,NH,T,hs)
    k = _split_heads(inp[:, :, C:2 * C], NH)
    v = _split_heads(inp[:, :, 2 * C:], NH)
    xp.matmul(q, k.transpose(0, 1, 3, 2), out=att)              # preatt (B,NH,T,T)
    causal_softmax(att, hs)
    y = att @ v                                                 # (B,NH,T,hs)
    out[...] = y.transpose(0, 2, 1, 3).reshape(B, T, C)         # heads side by side again


def attention_backward(dinp, dout, inp, att, NH, scratch=None, accumulate=True):
    # dinp, inp are (B,T,3C); dout is (B,T,C); att is (B,NH,T,T); scratch, if given, is a
    # (B,NH,T,T) buffer for the score gradients (else one is allocated)
    if not accumulate:
        dinp.fill(0.0)
    xp = get_array_module(inp)
    C3 = inp.shape[-1]
    C = C3 // 3
    hs = C // NH
    q = _split_heads(inp[:, :, :C], NH)                         # (B,NH,T,hs)
    k = _split_heads(inp[:, :, C:2 * C], NH)
    v = _split_heads(inp[:, :, 2 * C:], NH)
    dq = _split_heads(dinp[:, :, :C], NH)                       # views into dinp: += writes through
    dk = _split_heads(dinp[:, :, C:2 * C], NH)
    dv = _split_heads(dinp[:, :, 2 * C:], NH)
    dy = _split_heads(dout, NH)                                 # (B,NH,T,hs)
    # forward: y = att @ v
    datt = xp.empty_like(att) if scratch is None else scratch
    xp.matmul(dy, v.transpose(0, 1, 3, 2), out=datt)           # (B,NH,T,T)
    dv += att.transpose(0, 1, 3, 2) @ dy
    # forward: att = softmax(preatt) along the last axis, so
    # dpreatt = att * (datt - sum(datt * att)); masked entries have att = 0 and get 0
    rowdot = xp.einsum("bhij,bhij->bhi", datt, att)[..., None]  # (B,NH,T,1)
    datt -= rowdot
    datt *= att
    datt *= 1.0 / math.sqrt(hs)                                 # now dpreatt
    # forward: preatt = q @ k.T * scale
    dq += datt @ k
    dk += datt.transpose(0, 1, 3, 2) @ q


# ----------------------------------------------------------------------------
# GELU, tanh approximation (as GPT-2 and llm.c)

def gelu_forward(out, inp):
    # out, inp are (B,T,4C)
    xp = get_array_module(inp)
    x = inp
    out[...] = 0.5 * x * (1.0 + xp.tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x)))


def gelu_backward(dinp, inp, dout, accumulate=True):
    # dinp, inp, dout are (B,T,4C)
    xp = get_array_module(inp)
    x = inp
    tanh_out = xp.tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x))
    sech2 = 1.0 - tanh_out * tanh_out
    # d/dx of 0.5 * x * (1 + tanh(s * (x + c x^3)))
    local_grad = 0.5 * (1.0 + tanh_out) + 0.5 * x * sech2 * GELU_SCALE * (1.0 + 3.0 * GELU_CUBE * x * x)
    if accumulate:
        dinp += local_grad * dout
    else:
        xp.multiply(local_grad, dout, out=dinp)


# ----------------------------------------------------------------------------
# residual connection

def residual_forward(out, inp1, inp2):
    # all (B,T,C)
    xp = get_array_module(out)
    xp.add(inp1, inp2, out=out)


def residual_backward(dinp1, dinp2, dout):
    # all (B,T,C); forward: out = inp1 + inp2
    dinp1 += dout
    dinp2 += dout


# ----------------------------------------------------------------------------
# softmax over the real vocab, then cross-entropy against the targets

def softmax_crossentropy_forward(losses, probs, logits, targets, V):
    # losses is (B,T); probs, logits are (B,T,Vp); targets is (B,T) int32. Only the first V
    # columns are real tokens: the padded columns get probability 0 and never touch the loss.
    xp = get_array_module(logits)
    real = logits[..., :V]
    maxval = real.max(axis=-1, keepdims=True)                   # (B,T,1), for numerical stability
    e = xp.exp(real - maxval)
    probs[..., :V] = e / e.sum(axis=-1, keepdims=True)
    probs[..., V:] = 0.0
    picked = xp.take_along_axis(probs, targets[..., None].astype(xp.intp), axis=-1)[..., 0]
    losses[...] = -xp.log(picked)


def crossentropy_softmax_backward(dlogits, dlosses, probs, targets, V):
    # dlogits, probs are (B,T,Vp); dlosses, targets are (B,T)
    xp = get_array_module(probs)
    # forward: loss = -log(probs[target]), probs = softmax(logits[:V]); d loss / d logits[i] = p_i - [i == target]
    indicator = xp.zeros_like(probs[..., :V])
    xp.put_along_axis(indicator, targets[..., None].astype(xp.intp), 1.0, axis=-1)
    dlogits[..., :V] += (probs[..., :V] - indicator) * dlosses[..., None]
