"""Fused CPU kernels (Numba) for the memory-bound parts of a GPT-2 training step.

Each kernel does in one pass over memory what the plain layers in llmpy/gpt2/layers.py do in
several NumPy passes, and is tested against them. Signatures match the plain layers, except:
- `crossentropy_forward` keeps only each row's log-sum-exp instead of a (B,T,Vp) probs array, and
  `crossentropy_backward_inplace` turns the logits buffer into dlogits in place: one (B,T,Vp)
  buffer instead of three;
- `adamw_update` is the whole AdamW step for one tensor (llm.c's gpt2_update) and can zero the
  gradient as it goes, which saves a separate pass over the gradients.

tanh is evaluated as a rational function (coefficients from tools/fit_tanh.py, float32 error
under 4e-7) because Numba's libm tanh does not vectorize; plain arithmetic does.

What this module does not do: run on GPUs (CuPy takes the plain layers), or anything but C-contiguous
float32/float64 arrays.
"""

import math

import numpy as np

try:
    import numba
    AVAILABLE = True
except ImportError:  # the plain layers still work
    numba = None
    AVAILABLE = False

LN_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBE = 0.044715
# The per-layer kernels run on the calling thread alone: they sit between BLAS calls, and OpenBLAS's
# worker threads keep spinning on the other cores for a while after each GEMM, so a second thread
# pool fighting them for those cores made these kernels 10-30x slower (measured on 2 cores).
# AdamW and the gradient norm run after the backward pass and use all cores.
LAYER_PARALLEL = False
TANH_CLAMP = 9.0  # tanh(9) rounds to 1 in float32
# tanh(x) ~ x * P(x^2) / Q(x^2) on [-9, 9] (tools/fit_tanh.py, relative error 6e-8 in exact arithmetic)
TANH_P = (0.9999999422609331, 0.12919051471403095, 0.0029205673345698182, 9.26556773281547e-06,
          -1.2774625352453362e-08, 1.8239835072130193e-11)
TANH_Q = (1.0, 0.4625233562405239, 0.023762383745415366, 0.0002280727723174532)


def _jit(**kw):
    def wrap(f):
        return numba.njit(cache=True, fastmath=True, error_model="numpy", **kw)(f) if AVAILABLE else f
    return wrap


P0, P1, P2, P3, P4, P5 = TANH_P
Q0, Q1, Q2, Q3 = TANH_Q


@_jit(inline="always")
def _tanh(x):
    xc = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    s = xc * xc
    num = P0 + s * (P1 + s * (P2 + s * (P3 + s * (P4 + s * P5))))
    den = Q0 + s * (Q1 + s * (Q2 + s * Q3))
    # exactly +-1 once saturated, so 1 - tanh^2 (GELU's backward) is exactly 0 there
    t = xc * num / den
    saturated = abs(x) >= TANH_CLAMP
    return t + (math.copysign(1.0, x) - t) * saturated


EXP_CLAMP = -100.0  # exp(-100) is 4e-44: below float32's smallest normal, so clamping changes nothing
EXP_SQUARINGS = 8   # exp(x) = exp(x / 256) ** 256


@_jit(inline="always")
def _exp_nonpositive(x):
    # exp(x) for x <= 0, vectorizable (libm exp is not): a degree-10 Taylor polynomial of exp(x / 256)
    # on [-0.39, 0] (relative error < 1e-11), then squared 8 times (error grows to < 1e-8)
    r = max(x, EXP_CLAMP) * (1.0 / 256.0)
    p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800))))))))))
    for _ in range(EXP_SQUARINGS):
        p = p * p
    return p


# ----------------------------------------------------------------------------
# GELU

@_jit(parallel=LAYER_PARALLEL)
def _gelu_forward(out, inp):
    for i in numba.prange(inp.size):
        x = inp[i]
        out[i] = 0.5 * x * (1.0 + _tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x)))


@_jit(parallel=LAYER_PARALLEL)
def _gelu_backward(dinp, inp, dout):
    for i in numba.prange(inp.size):
        x = inp[i]
        t = _tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x))
        local_grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBE * x * x)
        dinp[i] += local_grad * dout[i]


def gelu_forward(out, inp):
    # out, inp are (B,T,4C)
    _gelu_forward(out.reshape(-1), inp.reshape(-1))


def gelu_backward(dinp, inp, dout):
    # dinp, inp, dout are (B,T,4C); adds into dinp
    _gelu_backward(dinp.reshape(-1), inp.reshape(-1), dout.reshape(-1))


# ----------------------------------------------------------------------------
# layernorm, one row (one position's C channels) per iteration

@_jit(parallel=LAYER_PARALLEL)
def _layernorm_forward(out, mean, rstd, inp, weight, bias, eps):
    N, C = inp.shape
    for i in numba.prange(N):
        x = inp[i]
        m = 0.0
        for c in range(C):
            m += x[c]
        m /= C
        v = 0.0
        for c in range(C):
            xs = x[c] - m
            v += xs * xs
        s = 1.0 / math.sqrt(v / C + eps)
        for c in range(C):
            out[i, c] = (x[c] - m) * s * weight[c] + bias[c]
        mean[i] = m
        rstd[i] = s


@_jit(parallel=LAYER_PARALLEL)
def _layernorm_backward(dinp, dweight_parts, dbias_parts, dout, inp, weight, mean, rstd):
    # rows are split into as many chunks as dweight_parts has rows; each chunk sums its own partial
    N, C = inp.shape
    nparts = dweight_parts.shape[0]
    for part in numba.prange(nparts):
        dw = dweight_parts[part]
        db = dbias_parts[part]
        for i in range(part * N // nparts, (part + 1) * N // nparts):
            m, s = mean[i], rstd[i]
            dnorm_mean = 0.0
            dnorm_norm_mean = 0.0
            for c in range(C):
                norm = (inp[i, c] - m) * s
                dnorm = weight[c] * dout[i, c]
                dnorm_mean += dnorm
                dnorm_norm_mean += dnorm * norm
                db[c] += dout[i, c]
                dw[c] += norm * dout[i, c]
            dnorm_mean /= C
            dnorm_norm_mean /= C
            for c in range(C):
                norm = (inp[i, c] - m) * s
                dinp[i, c] += (weight[c] * dout[i, c] - dnorm_mean - norm * dnorm_norm_mean) * s


def layernorm_forward(out, mean, rstd, inp, weight, bias, eps=LN_EPS):
    # out, inp are (B,T,C); mean, rstd are (B,T); weight, bias are (C,)
    C = inp.shape[-1]
    _layernorm_forward(out.reshape(-1, C), mean.reshape(-1), rstd.reshape(-1), inp.reshape(-1, C),
                       weight, bias, eps)


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    # dinp, dout, inp are (B,T,C); dweight, dbias, weight are (C,); adds into dinp, dweight, dbias
    C = inp.shape[-1]
    nparts = min(numba.get_num_threads() if LAYER_PARALLEL else 1, max(1, inp.size // C))
    dweight_parts = np.zeros((nparts, C), dtype=dweight.dtype)
    dbias_parts = np.zeros((nparts, C), dtype=dbias.dtype)
    _layernorm_backward(dinp.reshape(-1, C), dweight_parts, dbias_parts, dout.reshape(-1, C),
                        inp.reshape(-1, C), weight, mean.reshape(-1), rstd.reshape(-1))
    dweight += dweight_parts.sum(axis=0)
    dbias += dbias_parts.sum(axis=0)


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


@_jit(parallel=LAYER_PARALLEL)
def _crossentropy_forward(losses, lse, logits, targets, V):
    N = logits.shape[0]
    for i in numba.prange(N):
        row = logits[i]
        maxval = _row_max(row[:V])
        total = 0.0
        for j in range(V):
            total += _exp_nonpositive(row[j] - maxval)
        lse[i] = maxval + math.log(total)
        losses[i] = lse[i] - row[targets[i]]  # -log softmax(row)[target]


@_jit(parallel=LAYER_PARALLEL)
def _crossentropy_backward_inplace(logits, lse, targets, V, dloss):
    N, Vp = logits.shape
    for i in numba.prange(N):
        row = logits[i]
        m = lse[i]
        for j in range(V):
            row[j] = _exp_nonpositive(row[j] - m) * dloss  # probs * dloss
        row[targets[i]] -= dloss
        for j in range(V, Vp):
            row[j] = 0.0  # padded columns: no gradient, so padded wte rows get none


def crossentropy_forward(losses, lse, logits, targets, V):
    # losses, lse, targets are (B,T); logits is (B,T,Vp), read only
    Vp = logits.shape[-1]
    _crossentropy_forward(losses.reshape(-1), lse.reshape(-1), logits.reshape(-1, Vp), targets.reshape(-1), V)


def crossentropy_backward_inplace(logits, lse, targets, V, dloss):
    # logits (B,T,Vp) becomes dlogits = (softmax(logits[:V]) - onehot(target)) * dloss, padded columns 0
    Vp = logits.shape[-1]
    _crossentropy_backward_inplace(logits.reshape(-1, Vp), lse.reshape(-1), targets.reshape(-1), V, dloss)


# ----------------------------------------------------------------------------
# optimizer: AdamW for one tensor, and the squared norm for gradient clipping

@_jit(parallel=True)
def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                 bias_correction2, grad_scale, zero_grads):
    # all flat arrays of one length; llm.c's gpt2_update with the gradient scaled by grad_scale
    for i in numba.prange(params.size):
        g = grads[i] * grad_scale
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        m_hat = mi / bias_correction1
        v_hat = vi / bias_correction2
        params[i] -= lr * (m_hat / (math.sqrt(v_hat) + eps) + weight_decay * params[i])
        if zero_grads:
            grads[i] = 0.0


@_jit(parallel=True)
def sum_of_squares(x):
    total = 0.0  # float64 accumulator
    for i in numba.prange(x.size):
        total += np.float64(x[i]) * np.float64(x[i])
    return total
