"""Fused CPU kernels (Numba) for the memory-bound parts of a GPT-2 training step.

Each kernel does in one pass over memory what the plain layers in llmpy/gpt2/layers.py do in
several NumPy passes, and is tested against them. Signatures match the plain layers, except:
- `crossentropy_forward` keeps only each row's log-sum-exp instead of a (B,T,Vp) probs array, and
  `crossentropy_backward_inplace` turns the logits buffer into dlogits in place: one (B,T,Vp)
  buffer instead of three;
- `adamw_update` is the whole AdamW step for one tensor (llm.c's gpt2_update) and can zero the
  gradient as it goes, which saves a separate pass over the gradients.

tanh is evaluated as a rational function (coefficients from tools/fit_tanh.py, float32 error
under 4e-7) and exp as llmpy/fastmath.exp_f32, because Numba's libm tanh and exp do not vectorize;
plain arithmetic does.

What this module does not do: run on GPUs (CuPy takes the plain layers), or anything but C-contiguous
float32/float64 arrays.
"""

import math

import numpy as np

from llmpy.backend import park_blas_threads

try:
    import numba

    from llmpy.fastmath import exp_f32
    AVAILABLE = True
except ImportError:  # the plain layers still work
    numba = None
    exp_f32 = math.exp
    AVAILABLE = False

f32 = np.float32  # every constant below is float32, so no kernel silently computes in float64
LN_EPS = f32(1e-5)
GELU_SCALE = f32(math.sqrt(2.0 / math.pi))
GELU_CUBE = f32(0.044715)
HALF, ONE, ZERO = f32(0.5), f32(1.0), f32(0.0)
# The per-layer kernels run on the calling thread alone: they sit between BLAS calls, and thread
# wake-ups and OpenBLAS's spinning workers cost more than a second core gains on kernels this short
# (measured on 2 cores: a parallel GELU after a GEMM was no faster, and it slowed the next GEMM).
# AdamW and the gradient norm run after the backward pass and use all cores.
LAYER_PARALLEL = False
TANH_CLAMP = f32(9.0)  # tanh(9) rounds to 1 in float32
# tanh(x) ~ x * P(x^2) / Q(x^2) on [-9, 9] (tools/fit_tanh.py, relative error 6e-8 in exact arithmetic)
TANH_P = (0.9999999422609331, 0.12919051471403095, 0.0029205673345698182, 9.26556773281547e-06,
          -1.2774625352453362e-08, 1.8239835072130193e-11)
TANH_Q = (1.0, 0.4625233562405239, 0.023762383745415366, 0.0002280727723174532)


def _jit(**kw):
    def wrap(f):
        return numba.njit(cache=True, fastmath=True, error_model="numpy", **kw)(f) if AVAILABLE else f
    return wrap


P0, P1, P2, P3, P4, P5 = (f32(c) for c in TANH_P)
Q0, Q1, Q2, Q3 = (f32(c) for c in TANH_Q)


@_jit(inline="always")
def _tanh(x):
    xc = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    s = xc * xc
    num = P0 + s * (P1 + s * (P2 + s * (P3 + s * (P4 + s * P5))))
    den = Q0 + s * (Q1 + s * (Q2 + s * Q3))
    # exactly +-1 once saturated, so 1 - tanh^2 (GELU's backward) is exactly 0 there
    t = xc * num / den
    return ONE if x >= TANH_CLAMP else (-ONE if x <= -TANH_CLAMP else t)


# ----------------------------------------------------------------------------
# encoder backward: a scatter-add of B*T rows (np.add.at is slow at this)

@_jit()
def _encoder_backward(dwte, dwpe, dout, inp):
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            for c in range(C):
                dwte[ix, c] += dout[b, t, c]
                dwpe[t, c] += dout[b, t, c]


def encoder_backward(dwte, dwpe, dout, inp):
    # dwte is (Vp,C), dwpe is (maxT,C), dout is (B,T,C), inp is (B,T) int32; adds into dwte, dwpe
    _encoder_backward(dwte, dwpe, dout, inp)


# ----------------------------------------------------------------------------
# GELU

@_jit(parallel=LAYER_PARALLEL)
def _gelu_forward(out, inp):
    for i in numba.prange(inp.size):
        x = inp[i]
        out[i] = HALF * x * (ONE + _tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x)))


@_jit(parallel=LAYER_PARALLEL)
def _gelu_backward(dinp, inp, dout, accumulate):
    for i in numba.prange(inp.size):
        x = inp[i]
        t = _tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x))
        local_grad = HALF * (ONE + t) + HALF * x * (ONE - t * t) * GELU_SCALE * (ONE + f32(3.0) * GELU_CUBE * x * x)
        if accumulate:
            dinp[i] += local_grad * dout[i]
        else:
            dinp[i] = local_grad * dout[i]


def gelu_forward(out, inp):
    # out, inp are (B,T,4C)
    _gelu_forward(out.reshape(-1), inp.reshape(-1))


def gelu_backward(dinp, inp, dout, accumulate=True):
    # dinp, inp, dout are (B,T,4C); adds into dinp (writes it with accumulate=False)
    _gelu_backward(dinp.reshape(-1), inp.reshape(-1), dout.reshape(-1), accumulate)


# ----------------------------------------------------------------------------
# layernorm, one row (one position's C channels) per iteration

@_jit(parallel=LAYER_PARALLEL)
def _layernorm_forward(out, mean, rstd, inp, weight, bias, eps):
    N, C = inp.shape
    inv_C = ONE / f32(C)
    for i in numba.prange(N):
        x = inp[i]
        m = ZERO
        for c in range(C):
            m += x[c]
        m *= inv_C
        v = ZERO
        for c in range(C):
            xs = x[c] - m
            v += xs * xs
        s = ONE / np.sqrt(v * inv_C + eps)
        for c in range(C):
            out[i, c] = (x[c] - m) * s * weight[c] + bias[c]
        mean[i] = m
        rstd[i] = s


@_jit(parallel=LAYER_PARALLEL)
def _layernorm_backward(dinp, dweight_parts, dbias_parts, dout, inp, weight, mean, rstd):
    # rows are split into as many chunks as dweight_parts has rows; each chunk sums its own partial
    N, C = inp.shape
    inv_C = ONE / f32(C)
    nparts = dweight_parts.shape[0]
    for part in numba.prange(nparts):
        dw = dweight_parts[part]
        db = dbias_parts[part]
        for i in range(part * N // nparts, (part + 1) * N // nparts):
            m, s = mean[i], rstd[i]
            dnorm_mean = ZERO
            dnorm_norm_mean = ZERO
            for c in range(C):
                norm = (inp[i, c] - m) * s
                dnorm = weight[c] * dout[i, c]
                dnorm_mean += dnorm
                dnorm_norm_mean += dnorm * norm
                db[c] += dout[i, c]
                dw[c] += norm * dout[i, c]
            dnorm_mean *= inv_C
            dnorm_norm_mean *= inv_C
            for c in range(C):
                norm = (inp[i, c] - m) * s
                dinp[i, c] += (weight[c] * dout[i, c] - dnorm_mean - norm * dnorm_norm_mean) * s


def layernorm_forward(out, mean, rstd, inp, weight, bias, eps=LN_EPS):
    # out, inp are (B,T,C); mean, rstd are (B,T); weight, bias are (C,)
    C = inp.shape[-1]
    _layernorm_forward(out.reshape(-1, C), mean.reshape(-1), rstd.reshape(-1), inp.reshape(-1, C),
                       weight, bias, f32(eps))


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    # dinp, dout, inp are (B,T,C); dweight, dbias, weight are (C,); adds into dinp, dweight, dbias
    C = inp.shape[-1]
    nparts = min(numba.get_num_threads() if LAYER_PARALLEL else 1, max(1, inp.size // C))
    if nparts == 1:  # accumulate straight into the gradients
        _layernorm_backward(dinp.reshape(-1, C), dweight[None], dbias[None], dout.reshape(-1, C),
                            inp.reshape(-1, C), weight, mean.reshape(-1), rstd.reshape(-1))
        return
    dweight_parts = np.zeros((nparts, C), dtype=dweight.dtype)
    dbias_parts = np.zeros((nparts, C), dtype=dbias.dtype)
    _layernorm_backward(dinp.reshape(-1, C), dweight_parts, dbias_parts, dout.reshape(-1, C),
                        inp.reshape(-1, C), weight, mean.reshape(-1), rstd.reshape(-1))
    dweight += dweight_parts.sum(axis=0)
    dbias += dbias_parts.sum(axis=0)


# ----------------------------------------------------------------------------
# causal attention: BLAS for the two products each way, one fused kernel for the softmax between

@_jit()
def _causal_softmax_rows(att, scale):
    # att is (N,T,T): rows of raw scores q.k, softmaxed in place over keys 0..t; keys after t get 0
    N, T, _ = att.shape
    for n in range(N):
        for t in range(T):
            row = att[n, t]
            maxval = row[0] * scale
            for j in range(1, t + 1):
                maxval = max(maxval, row[j] * scale)
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
def _causal_softmax_backward_rows(datt, att, scale):
    # datt, att are (N,T,T); datt (d att) becomes d preatt in place, where preatt = q.k * scale:
    # dpreatt[j] = att[j] * (datt[j] - sum_k att[k] datt[k]) * scale, zero for keys after t
    N, T, _ = att.shape
    for n in range(N):
        for t in range(T):
            a, d = att[n, t], datt[n, t]
            rowdot = ZERO
            for j in range(t + 1):
                rowdot += a[j] * d[j]
            for j in range(t + 1):
                d[j] = a[j] * (d[j] - rowdot) * scale
            for j in range(t + 1, T):
                d[j] = ZERO


def _split_heads(x, NH):
    # x is (B,T,C) -> (B,NH,T,hs), a view
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def attention_forward(out, att, inp, NH):
    # out is (B,T,C); att is (B,NH,T,T), the softmaxed weights (cached for backward); inp is (B,T,3C)
    T, C3 = inp.shape[1:]
    C = C3 // 3
    q = _split_heads(inp[:, :, :C], NH)                         # (B,NH,T,hs)
    k = _split_heads(inp[:, :, C:2 * C], NH)
    v = _split_heads(inp[:, :, 2 * C:], NH)
    np.matmul(q, k.transpose(0, 1, 3, 2), out=att)              # raw scores (B,NH,T,T)
    _causal_softmax_rows(att.reshape(-1, T, T), f32(1.0 / math.sqrt(C // NH)))
    np.matmul(att, v, out=_split_heads(out, NH))                # y (B,NH,T,hs), written as (B,T,C)


def attention_backward(dinp, dout, inp, att, NH, scratch=None, accumulate=True):
    # dinp, inp are (B,T,3C); dout is (B,T,C); att is (B,NH,T,T); scratch a (B,NH,T,T) buffer.
    # Adds into dinp, or with accumulate=False writes it (the products go straight into its views)
    T, C3 = inp.shape[1:]
    C = C3 // 3
    q = _split_heads(inp[:, :, :C], NH)                         # (B,NH,T,hs)
    k = _split_heads(inp[:, :, C:2 * C], NH)
    v = _split_heads(inp[:, :, 2 * C:], NH)
    dq = _split_heads(dinp[:, :, :C], NH)                       # views into dinp: += writes through
    dk = _split_heads(dinp[:, :, C:2 * C], NH)
    dv = _split_heads(dinp[:, :, 2 * C:], NH)
    dy = _split_heads(dout, NH)                                 # (B,NH,T,hs)
    datt = np.empty_like(att) if scratch is None else scratch
    # forward: y = att @ v
    np.matmul(dy, v.transpose(0, 1, 3, 2), out=datt)           # (B,NH,T,T)
    # forward: att = softmax(q @ k.T * scale), causal
    _causal_softmax_backward_rows(datt.reshape(-1, T, T), att.reshape(-1, T, T), f32(1.0 / math.sqrt(C // NH)))
    if accumulate:
        dv += att.transpose(0, 1, 3, 2) @ dy
        dq += datt @ k
        dk += datt.transpose(0, 1, 3, 2) @ q
    else:
        np.matmul(att.transpose(0, 1, 3, 2), dy, out=dv)
        np.matmul(datt, k, out=dq)
        np.matmul(datt.transpose(0, 1, 3, 2), q, out=dk)


# ----------------------------------------------------------------------------
# softmax + cross-entropy over the real vocab, keeping only log-sum-exp per row

MAX_LANES = 16  # independent running maxima, so the loop vectorizes (one long dependency chain would not)


@_jit()
def _row_max(x):
    lanes = np.full(MAX_LANES, -np.inf, dtype=x.dtype)
    n = x.size // MAX_LANES * MAX_LANES
    for j in range(0, n, MAX_LANES):
        for k in range(MAX_LANES):
            v = x[j + k]
            lanes[k] = max(lanes[k], v)
    m = lanes.max()
    for j in range(n, x.size):
        m = max(m, x[j])
    return m


@_jit(parallel=True)
def _crossentropy_forward(losses, lse, logits, targets, V):
    N = logits.shape[0]
    for i in numba.prange(N):
        row = logits[i]
        maxval = _row_max(row[:V])
        total = ZERO
        for j in range(V):
            total += exp_f32(row[j] - maxval)
        lse[i] = maxval + np.log(total)
        losses[i] = lse[i] - row[targets[i]]  # -log softmax(row)[target]


@_jit(parallel=True)
def _crossentropy_backward_inplace(logits, lse, targets, V, dloss):
    N, Vp = logits.shape
    for i in numba.prange(N):
        row = logits[i]
        m = lse[i]
        for j in range(V):
            row[j] = exp_f32(row[j] - m) * dloss  # probs * dloss
        row[targets[i]] -= dloss
        for j in range(V, Vp):
            row[j] = ZERO  # padded columns: no gradient, so padded wte rows get none


def crossentropy_forward(losses, lse, logits, targets, V):
    # losses, lse, targets are (B,T); logits is (B,T,Vp), read only
    Vp = logits.shape[-1]
    park_blas_threads()  # ~15 ms of work over 50k columns per row: worth both cores
    _crossentropy_forward(losses.reshape(-1), lse.reshape(-1), logits.reshape(-1, Vp), targets.reshape(-1), V)


def crossentropy_backward_inplace(logits, lse, targets, V, dloss):
    # logits (B,T,Vp) becomes dlogits = (softmax(logits[:V]) - onehot(target)) * dloss, padded columns 0
    Vp = logits.shape[-1]
    park_blas_threads()
    _crossentropy_backward_inplace(logits.reshape(-1, Vp), lse.reshape(-1), targets.reshape(-1), V, f32(dloss))


# ----------------------------------------------------------------------------
# optimizer: AdamW for one tensor, and the squared norm for gradient clipping

@_jit(parallel=True)
def _adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                  bias_correction2, grad_scale, zero_grads):
    # float32 throughout, as llm.c's gpt2_update; the bias corrections become multiplications
    one_minus_beta1, one_minus_beta2 = ONE - beta1, ONE - beta2
    inv_bc1, inv_bc2 = ONE / bias_correction1, ONE / bias_correction2
    for i in numba.prange(params.size):
        g = grads[i] * grad_scale
        mi = beta1 * m[i] + one_minus_beta1 * g
        vi = beta2 * v[i] + one_minus_beta2 * g * g
        m[i] = mi
        v[i] = vi
        m_hat = mi * inv_bc1
        v_hat = vi * inv_bc2
        params[i] -= lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * params[i])
        if zero_grads:
            grads[i] = ZERO


def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                 bias_correction2, grad_scale, zero_grads):
    # all flat float32 arrays of one length; llm.c's gpt2_update with the gradient scaled by grad_scale
    park_blas_threads()
    _adamw_update(params, grads, m, v, f32(lr), f32(beta1), f32(beta2), f32(eps), f32(weight_decay),
                  f32(bias_correction1), f32(bias_correction2), f32(grad_scale), bool(zero_grads))


SUM_PARTS = 64  # sum_of_squares adds this many partial sums, whatever the thread count: same bits on 1 or 16 threads


def sum_of_squares(x):
    """sum(x**2) in float64 over a 1-D float32 array; the result does not depend on the number of threads (the
    parts are fixed, then added in order), so a run's grad-norm clipping is the same on a busy or an idle machine."""
    park_blas_threads()
    parts = np.zeros(SUM_PARTS, np.float64)
    _sum_of_squares_parts(parts, x)
    return float(parts.sum())


@_jit(parallel=True)
def _sum_of_squares_parts(parts, x):
    P, N = parts.shape[0], x.size
    for p in numba.prange(P):
        total = 0.0  # float64 accumulator
        for i in range(p * N // P, (p + 1) * N // P):
            total += np.float64(x[i]) * np.float64(x[i])
        parts[p] = total
