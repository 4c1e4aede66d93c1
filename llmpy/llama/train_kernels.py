"""Fused CPU kernels (Numba) for the memory-bound parts of a Llama training step.

Each function has the signature of the plain layer it accelerates in llmpy/llama/layers.py, does in one pass
over memory what that layer does in several NumPy passes with temporaries, and is tested against it
(tests/test_llama_layers.py):
    embedding_forward   -> layers.embedding_forward    (a row copy, without np.take's buffer)
    embedding_backward  -> layers.embedding_backward   (a scatter-add loop; np.add.at is slow)
    rmsnorm_forward     -> layers.rmsnorm_forward
    rmsnorm_backward    -> layers.rmsnorm_backward
    rope_forward        -> layers.rope_forward          (in place allowed, as the plain one)
    rope_backward       -> layers.rope_backward
    swiglu_forward      -> layers.swiglu_forward        (sigmoid through fastmath.exp_f32, which vectorizes)
    swiglu_backward     -> layers.swiglu_backward
    attention_forward   -> layers.attention_forward     (BLAS products, a fused causal softmax between)
    attention_backward  -> layers.attention_backward    (also takes `heads`, a (B,T,C) scratch: see there)
The softmax + cross-entropy is GPT-2's (llmpy/gpt2/kernels.py), shared as the plain one is.

Unlike GPT-2's per-layer kernels (kernels.LAYER_PARALLEL, measured at T=64, where each is a fraction of a
millisecond), these run in parallel over rows on Numba's threads, after park_blas_threads() has stopped
OpenBLAS's spinning workers, when a call is big enough to be worth it (_threads_for): at stories110M's shape
(B=4, T=256) each call is milliseconds of memory-bound work. Every result is independent of the thread count
(rows are split into a fixed number of parts where a sum crosses rows), so a run's bits do not change when
llmpy/threads.py changes the count.
What this module does not do: run on GPUs (CuPy takes the plain layers), or anything but C-contiguous float32
arrays (its constants are float32).
"""

import contextlib
import math

import numba
import numpy as np

from llmpy.backend import park_blas_threads
from llmpy.fastmath import exp_f32

f32 = np.float32
ONE, ZERO = f32(1.0), f32(0.0)
PARTS = 32       # rows are summed in this many fixed parts (RMSNorm's weight gradient), whatever the threads
MAX_LANES = 16   # independent running maxima, so the softmax's max vectorizes (one dependency chain would not)
PARALLEL_MIN = 1 << 19  # elements: smaller calls (a small model's layers) run on one thread, see _threads_for


def _jit(**kw):
    return numba.njit(cache=True, fastmath=True, error_model="numpy", parallel=True, **kw)


@contextlib.contextmanager
def _threads_for(size):
    # The threads for a kernel call over `size` elements: all of Numba's, with OpenBLAS's spinning workers parked
    # first (the next GEMM restarts them), or one thread below PARALLEL_MIN, where the call takes microseconds and
    # waking and parking threads would cost more than they give (measured on 2 cores: a dim-256 Llama's step 9%
    # slower in parallel; stories110M's at B=4, T=256, whose calls are all above, 2% faster)
    if size >= PARALLEL_MIN:
        park_blas_threads()
        yield
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _rows(x):
    # (..., D) -> (N, D), a view
    return x.reshape(-1, x.shape[-1])


# ----------------------------------------------------------------------------
# token embedding: a row copy forward (np.take with out= buffers a copy of out when it checks the ids; the
# model checks them once per batch), a scatter-add backward

@_jit()
def _embedding_forward(out, inp, wte):
    N, C = out.shape
    for i in numba.prange(N):
        row = wte[inp[i]]
        for c in range(C):
            out[i, c] = row[c]


def embedding_forward(out, inp, wte):
    # out is (B,T,C), inp is (B,T) int32 token ids in [0, V) (not checked here), wte is (V,C)
    with _threads_for(out.size):
        _embedding_forward(_rows(out), inp.reshape(-1), wte)


@numba.njit(cache=True, fastmath=True, error_model="numpy")
def _embedding_backward(dwte, dout, inp):
    # serial: a token id may repeat, and rows of dwte would race
    N, C = dout.shape
    for i in range(N):
        row = dwte[inp[i]]
        for c in range(C):
            row[c] += dout[i, c]


def embedding_backward(dwte, dout, inp):
    # dwte is (V,C), dout is (B,T,C), inp is (B,T) int32; adds into dwte
    _embedding_backward(dwte, _rows(dout), inp.reshape(-1))


# ----------------------------------------------------------------------------
# RMSNorm, one row (one position's C channels) per iteration

@_jit()
def _rmsnorm_forward(out, rstd, inp, weight, eps):
    N, C = inp.shape
    inv_C = ONE / f32(C)
    for i in numba.prange(N):
        x = inp[i]
        ss = ZERO
        for c in range(C):
            ss += x[c] * x[c]
        s = ONE / np.sqrt(ss * inv_C + eps)
        for c in range(C):
            out[i, c] = x[c] * s * weight[c]
        rstd[i] = s


@_jit()
def _rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, accumulate):
    N, C = inp.shape
    inv_C = ONE / f32(C)
    dweight_parts = np.zeros((PARTS, C), dtype=dweight.dtype)  # each part's rows summed alone, then in order
    for part in numba.prange(PARTS):
        dw = dweight_parts[part]
        for i in range(part * N // PARTS, (part + 1) * N // PARTS):
            s = rstd[i]
            dnorm_norm_mean = ZERO
            for c in range(C):
                norm = inp[i, c] * s
                dnorm_norm_mean += weight[c] * dout[i, c] * norm
                dw[c] += norm * dout[i, c]
            dnorm_norm_mean *= inv_C
            for c in range(C):
                dx = (weight[c] * dout[i, c] - inp[i, c] * s * dnorm_norm_mean) * s
                if accumulate:
                    dinp[i, c] += dx
                else:
                    dinp[i, c] = dx
    for part in range(PARTS):
        for c in range(C):
            dweight[c] += dweight_parts[part, c]


def rmsnorm_forward(out, rstd, inp, weight, eps):
    # out, inp are (B,T,C); rstd is (B,T); weight is (C,)
    with _threads_for(inp.size):
        _rmsnorm_forward(_rows(out), rstd.reshape(-1), _rows(inp), weight, f32(eps))


def rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, accumulate=True):
    # dinp, dout, inp are (B,T,C); dweight, weight are (C,); rstd is (B,T); adds into dinp, dweight
    with _threads_for(inp.size):
        _rmsnorm_backward(_rows(dinp), dweight, _rows(dout), _rows(inp), weight, rstd.reshape(-1), accumulate)


# ----------------------------------------------------------------------------
# RoPE on adjacent pairs, in place or not: each pair is read before it is written

@_jit()
def _rope(out, inp, cos, sin, sign, accumulate):
    # inp, out are (B,T,D), D = heads * hs; turns every pair by +angle (sign 1) or -angle (sign -1)
    B, T, D = inp.shape
    half = cos.shape[1]
    for bt in numba.prange(B * T):
        b, t = bt // T, bt % T
        c, s = cos[t], sin[t]
        x, o = inp[b, t], out[b, t]
        for h in range(D // (2 * half)):
            base = 2 * half * h
            for j in range(half):
                x0, x1 = x[base + 2 * j], x[base + 2 * j + 1]
                sj = sign * s[j]
                r0 = x0 * c[j] - x1 * sj
                r1 = x0 * sj + x1 * c[j]
                if accumulate:
                    o[base + 2 * j] += r0
                    o[base + 2 * j + 1] += r1
                else:
                    o[base + 2 * j] = r0
                    o[base + 2 * j + 1] = r1


def rope_forward(out, inp, cos, sin):
    # out, inp are (B,T,heads*hs) (out may be inp); cos, sin are (T',hs/2), T' >= T
    with _threads_for(inp.size):
        _rope(out, inp, cos, sin, ONE, False)


def rope_backward(dinp, dout, cos, sin, accumulate=True):
    # dinp, dout are (B,T,heads*hs) (dinp may be dout with accumulate=False); the rotation back by -angle
    with _threads_for(dout.size):
        _rope(dinp, dout, cos, sin, -ONE, accumulate)


# ----------------------------------------------------------------------------
# SwiGLU

@_jit()
def _swiglu_forward(out, h1, h3):
    for i in numba.prange(h1.size):
        g = h1[i]
        out[i] = g / (ONE + exp_f32(-g)) * h3[i]


@_jit()
def _swiglu_backward(dh1, dh3, dout, h1, h3, accumulate):
    for i in numba.prange(h1.size):
        g = h1[i]
        sig = ONE / (ONE + exp_f32(-g))
        d1 = dout[i] * h3[i] * sig * (ONE + g * (ONE - sig))
        d3 = dout[i] * g * sig
        if accumulate:
            dh1[i] += d1
            dh3[i] += d3
        else:
            dh1[i] = d1
            dh3[i] = d3


def swiglu_forward(out, h1, h3):
    # out, h1, h3 are (B,T,H)
    with _threads_for(h1.size):
        _swiglu_forward(out.reshape(-1), h1.reshape(-1), h3.reshape(-1))


def swiglu_backward(dh1, dh3, dout, h1, h3, accumulate=True):
    # all (B,T,H); adds into dh1, dh3 (writes them with accumulate=False)
    with _threads_for(h1.size):
        _swiglu_backward(dh1.reshape(-1), dh3.reshape(-1), dout.reshape(-1), h1.reshape(-1), h3.reshape(-1),
                         accumulate)


# ----------------------------------------------------------------------------
# causal grouped-query attention: BLAS for the products, a fused causal softmax between

def _heads(x, NKV, G):
    # x is (B,T,NKV*G*hs) -> (B,NKV,G,T,hs), a view (as layers._heads)
    B, T, D = x.shape
    return x.reshape(B, T, NKV, G, D // (NKV * G)).transpose(0, 2, 3, 1, 4)


@_jit()
def _causal_softmax_forward(att, scale):
    # att is (N,T,T): rows of raw scores q.k, softmaxed in place over keys 0..t (scaled by `scale` first);
    # keys after t get 0. The plain form: layers.attention_forward's mask, max, exp and sum lines.
    N, T, _ = att.shape
    for n in numba.prange(N):
        lanes = np.empty(MAX_LANES, dtype=att.dtype)
        for t in range(T):
            row = att[n, t]
            lanes[:] = row[0]
            full = (t + 1) // MAX_LANES * MAX_LANES
            for j in range(0, full, MAX_LANES):
                for k in range(MAX_LANES):
                    lanes[k] = max(lanes[k], row[j + k])
            maxval = lanes.max()
            for j in range(full, t + 1):
                maxval = max(maxval, row[j])
            maxval *= scale  # scale > 0: the max of the scaled row
            total = ZERO
            for j in range(t + 1):
                e = exp_f32(row[j] * scale - maxval)
                row[j] = e
                total += e
            inv = ONE / total
            for j in range(t + 1):
                row[j] *= inv
            for j in range(t + 1, T):
                row[j] = ZERO


@_jit()
def _causal_softmax_backward(datt, att, scale):
    # datt, att are (N,T,T); datt (d att) becomes d preatt in place, where preatt = q.k * scale:
    # dpreatt[j] = att[j] * (datt[j] - sum_k att[k] datt[k]) * scale, zero for keys after t
    # (layers.attention_backward's rowdot lines)
    N, T, _ = att.shape
    for n in numba.prange(N):
        for t in range(T):
            a, d = att[n, t], datt[n, t]
            rowdot = ZERO
            for j in range(t + 1):
                rowdot += a[j] * d[j]
            for j in range(t + 1):
                d[j] = a[j] * (d[j] - rowdot) * scale
            for j in range(t + 1, T):
                d[j] = ZERO


def _product(out, a, b, accumulate):
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)


def attention_forward(out, att, q, k, v, NH):
    # out, q are (B,T,C); k, v are (B,T,KV); att is (B,NH,T,T), the softmaxed weights
    B, T, C = q.shape
    hs = C // NH
    NKV = k.shape[-1] // hs
    G = NH // NKV
    np.matmul(_heads(q, NKV, G), _heads(k, NKV, 1).swapaxes(-1, -2), out=att.reshape(B, NKV, G, T, T))
    with _threads_for(att.size):
        _causal_softmax_forward(att.reshape(-1, T, T), f32(1.0 / math.sqrt(hs)))
    np.matmul(att.reshape(B, NKV, G, T, T), _heads(v, NKV, 1), out=_heads(out, NKV, G))


def attention_backward(dq, dk, dv, dout, q, k, v, att, NH, scratch=None, accumulate=True, heads=None):
    # dq, q, dout are (B,T,C); dk, dv, k, v are (B,T,KV); att is (B,NH,T,T); scratch a (B,NH,T,T) buffer
    # for the score gradients; heads a (B,T,C) buffer for the head-major copies below (G > 1 only)
    B, T, C = q.shape
    hs = C // NH
    NKV = k.shape[-1] // hs
    G = NH // NKV
    datt = np.empty_like(att) if scratch is None else scratch
    att5, datt5 = att.reshape(B, NKV, G, T, T), datt.reshape(B, NKV, G, T, T)
    q5, k5, v5, dy5 = _heads(q, NKV, G), _heads(k, NKV, 1), _heads(v, NKV, 1), _heads(dout, NKV, G)
    dk4, dv4 = _heads(dk, NKV, 1)[:, :, 0], _heads(dv, NKV, 1)[:, :, 0]  # (B,NKV,T,hs) views
    # forward: y = att @ v, then att = softmax(q @ k.T * scale), causal
    np.matmul(dy5, v5.swapaxes(-1, -2), out=datt5)
    with _threads_for(att.size):
        _causal_softmax_backward(datt.reshape(-1, T, T), att.reshape(-1, T, T), f32(1.0 / math.sqrt(hs)))
    _product(_heads(dq, NKV, G), datt5, k5, accumulate)
    # dv and dk of kv head j sum over its G query heads: with those heads' rows stacked head-major (a copy of
    # dy and of q into `heads`), each is one GEMM of inner size G*T, and the sum happens inside it
    if G == 1:
        _product(dv4, att5[:, :, 0].swapaxes(-1, -2), dy5[:, :, 0], accumulate)
        _product(dk4, datt5[:, :, 0].swapaxes(-1, -2), q5[:, :, 0], accumulate)
        return
    stacked = (np.empty((B, NKV, G, T, hs), q.dtype) if heads is None
               else heads.reshape(-1)[:q.size].reshape(B, NKV, G, T, hs))
    stacked[...] = dy5
    _product(dv4, att.reshape(B, NKV, G * T, T).swapaxes(-1, -2), stacked.reshape(B, NKV, G * T, hs), accumulate)
    stacked[...] = q5
    _product(dk4, datt.reshape(B, NKV, G * T, T).swapaxes(-1, -2), stacked.reshape(B, NKV, G * T, hs), accumulate)
