"""Q8_0 quantization (llama2.c's runq.c / export.py version2): symmetric int8 in groups.

A weight matrix (d, n) becomes int8 values q (d, n) in [-127, 127] and one float32 scale per group
of `group_size` consecutive values, s (d, n // group_size), with w ~= q * s. Groups never straddle
rows here (n % group_size == 0 is required), which is what lets a matmul work row by row.
Activations are quantized the same way on the fly, and a dot product is done in int32 per group:
out[i] = sum_g (sum_k xq[g,k] * wq[i,g,k]) * ws[i,g] * xs[g].

Not handled: other quantization schemes (Q4, per-channel), asymmetric ranges.
"""

from dataclasses import dataclass

import numba
import numpy as np

Q_MAX = 127.0  # symmetric int8 range [-127, 127]


@dataclass
class QTensor:
    q: np.ndarray  # int8 (..., n)
    s: np.ndarray  # float32 (..., n // group_size)
    group_size: int

    @property
    def shape(self):
        return self.q.shape

    def __getitem__(self, i):
        # one layer of a stacked (L, d, n) tensor
        return QTensor(self.q[i], self.s[i], self.group_size)


def quantize_q80(w, group_size):
    """Quantize fp32 w (..., n) into a QTensor like export.py's quantize_q80 (round half to even)."""
    # w is (..., n); groups run along the last axis
    w = np.asarray(w, dtype=np.float32)
    assert w.shape[-1] % group_size == 0, f"last dim {w.shape[-1]} is not a multiple of group size {group_size}"
    g = w.reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)  # (..., G, gs)
    scale = np.abs(g).max(axis=-1) / np.float32(Q_MAX)  # (..., G)
    safe = np.where(scale > 0, scale, np.float32(1.0))  # an all-zero group quantizes to zeros
    q = np.round(g / safe[..., None]).astype(np.int8).reshape(w.shape)
    return QTensor(q, scale.astype(np.float32), group_size)


def dequantize(t):
    """fp32 array from a QTensor."""
    g = t.q.reshape(*t.s.shape, t.group_size).astype(np.float32)
    return (g * t.s[..., None]).reshape(t.q.shape)


# -----------------------------------------------------------------------------
# numba kernels (the runtime path)

@numba.njit(cache=True, fastmath=True)
def quantize_rows(xq, xs, x, group_size):
    """Dynamic activation quantization like runq.c's quantize, row by row.

    x is (B, n) fp32; xq (B, n) int8 and xs (B, n // group_size) fp32 are written.
    """
    B, n = x.shape
    for b in range(B):
        for g in range(n // group_size):
            wmax = np.float32(0.0)
            for k in range(g * group_size, (g + 1) * group_size):
                wmax = max(wmax, abs(x[b, k]))
            scale = wmax / np.float32(Q_MAX)
            xs[b, g] = scale
            inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
            for k in range(g * group_size, (g + 1) * group_size):
                v = x[b, k] * inv
                xq[b, k] = np.int8(np.floor(abs(v) + np.float32(0.5)) * np.sign(v))  # C round(): half away from 0


@numba.njit(cache=True, fastmath=True, inline="always")
def _group_dot(xg, wg, n):
    """int32 sum of n int8 products. The explicit int32 keeps numba from widening the sum to int64,
    which lets LLVM use vpmaddwd (int8 pairs multiplied and summed into int32 lanes)."""
    ival = np.int32(0)
    for k in range(n):
        ival = np.int32(ival + np.int32(xg[k]) * np.int32(wg[k]))
    return ival


@numba.njit(cache=True, parallel=True, fastmath=True)
def matmul_q8(out, xq, xs, wq, ws, group_size):
    """out (B, d) = x (B, n) @ w (d, n).T with both sides Q8_0: int32 sums per group, fp32 across groups.

    prange over output rows i: each weight row is read from memory once and reused for all B rows
    of x while it sits in cache, so B streams cost about one stream's weight traffic.
    """
    B, n = xq.shape
    d = wq.shape[0]
    G = n // group_size
    for i in numba.prange(d):
        wrow, wsrow = wq[i], ws[i]
        for b in range(B):
            xrow, xsrow = xq[b], xs[b]
            val = np.float32(0.0)
            for g in range(G):
                # 1-D slices indexed from 0 (non-negative indices vectorize); common group sizes get a
                # compile-time trip count, which LLVM unrolls completely
                xg = xrow[g * group_size:(g + 1) * group_size]
                wg = wrow[g * group_size:(g + 1) * group_size]
                if group_size == 64:
                    ival = _group_dot(xg, wg, 64)
                elif group_size == 32:
                    ival = _group_dot(xg, wg, 32)
                else:
                    ival = _group_dot(xg, wg, group_size)
                val += np.float32(ival) * wsrow[g] * xsrow[g]
            out[b, i] = val
