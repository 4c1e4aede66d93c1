"""Numba kernels of the Llama forward pass: rmsnorm, RoPE + attention over the KV cache, SwiGLU, a
few-row matmul, and the whole forward of a few rows (decode) fused into one call.

Why one fused call for decode: a stories15M token is ~2.3 ms of weight reads at the bandwidth limit,
and the ~50 kernel launches of a per-operation Python loop cost several tenths of that in dispatch
alone. The fused functions run every layer without returning to Python; only the matmuls and the
attention heads are parallel (prange), everything else is a few microseconds of serial work. Decode of 1-3
rows goes one step further in decode.py (one parallel region per token), from the same building blocks:
matmul_decode_step, swiglu_decode_step, q8_decode_part, rope_store_heads, attend_head.

Weights (the matrices and the embedding table) are float32 or, read as such with fp32 sums, bfloat16 bits in
uint16 arrays or float16 bits in int16 arrays (rowdot.WEIGHT_KINDS): the same functions compile for each dtype.

Not handled here: prefill of long prompts (inference.py uses BLAS sgemm for many rows, on bf16 / fp16 weights
widened a block of rows at a time by widen_rows).
"""

import math

import numba
import numpy as np

from llmpy.fastmath import exp_f32
from llmpy.llama.quant import Q8_STREAMS, dot_q8_rows, matmul_q8, quantize_row, quantize_rows
from llmpy.llama.rowdot import dot_block_f32, dot_rows_f32, weight_f32

# matmul_forward of a few rows reads the weight as this many evenly spaced sequential streams at once
STREAMS = 8


# -----------------------------------------------------------------------------
# building blocks


@numba.njit(cache=True, fastmath=True)
def residual_rmsnorm(x, dx, out, weight, eps):
    """x += dx (when dx has rows), then out = rmsnorm(x) * weight; x, dx, out are (B, C), weight (C,)."""
    B, C = x.shape
    for b in range(B):
        ss = np.float32(0.0)
        for j in range(C):
            if dx.shape[0] > 0:
                x[b, j] += dx[b, j]
            ss += x[b, j] * x[b, j]
        rstd = np.float32(1.0) / np.sqrt(ss / np.float32(C) + np.float32(eps))
        for j in range(C):
            out[b, j] = weight[j] * (rstd * x[b, j])


@numba.njit(cache=True, fastmath=True)
def rope_store_kv(qkv, key_cache, value_cache, streams, positions, cos, sin, QD, KV):
    """RoPE on q and k of every row (in place in qkv), then k and v into the cache at (stream, pos).

    qkv is (B, QD + 2*KV) = [q | k | v] (QD = NH * hs: C unless config.head_dim says otherwise); key_cache,
    value_cache are (S, NKV, T, hs) for one layer.
    Pairs (2j, 2j+1) within each head rotate by pos * theta^(-2j / hs), as run.c does. Loops over heads and
    pairs, not over columns: a column's head and pair index by division (i // hs, i % hs) cost an integer
    division each, which made this serial pass 5% of an int8 110M token.
    """
    hs = 2 * cos.shape[1]
    rope_store_heads(qkv, key_cache, value_cache, streams, positions, cos, sin, QD, KV, 0, QD // hs, 0, KV // hs)


@numba.njit(cache=True, fastmath=True)
def rope_store_heads(qkv, key_cache, value_cache, streams, positions, cos, sin, QD, KV, h0, h1, g0, g1):
    """rope_store_kv for query heads h0..h1-1 and key/value heads g0..g1-1 only (a thread's share)."""
    half = cos.shape[1]
    hs = 2 * half
    for b in range(qkv.shape[0]):
        s, p = streams[b], positions[b]
        fcr, fci = cos[p], sin[p]  # (hs/2,) each
        for h in range(h0, h1):
            qh = qkv[b, h * hs:(h + 1) * hs]
            for j in range(half):
                v0, v1 = qh[2 * j], qh[2 * j + 1]
                qh[2 * j] = v0 * fcr[j] - v1 * fci[j]
                qh[2 * j + 1] = v0 * fci[j] + v1 * fcr[j]
        for h in range(g0, g1):
            kh = qkv[b, QD + h * hs:QD + (h + 1) * hs]
            kc, vc = key_cache[s, h, p], value_cache[s, h, p]  # (hs,) each
            for j in range(half):
                v0, v1 = kh[2 * j], kh[2 * j + 1]
                kc[2 * j] = v0 * fcr[j] - v1 * fci[j]
                kc[2 * j + 1] = v0 * fci[j] + v1 * fcr[j]
            vc[:] = qkv[b, QD + KV + h * hs:QD + KV + (h + 1) * hs]


@numba.njit(cache=True, parallel=True, fastmath=True)
def attention_forward(out, att, qkv, key_cache, value_cache, streams, positions, cos, sin, n_heads, n_kv_heads):
    """RoPE on q and k, store k and v in the cache, causal grouped-query attention.

    qkv is (B, QD + 2*KV) = [q | k | v] per row; key_cache, value_cache are (S, NKV, T, hs) for one layer;
    streams, positions are (B,) int; cos, sin are (T, hs/2); att is scratch (B, NH, T); out is (B, QD) (QD = NH * hs).
    All rows are stored first, so rows of one stream at later positions (a prompt) see the earlier ones.
    The (row, head) pairs run in parallel: at long contexts the KV cache is a sizable read.
    """
    B = qkv.shape[0]
    QD = out.shape[1]
    KV = n_kv_heads * (QD // n_heads)
    rope_store_kv(qkv, key_cache, value_cache, streams, positions, cos, sin, QD, KV)
    for bh in numba.prange(B * n_heads):
        attend_head(out, att, qkv, key_cache, value_cache, streams, positions, n_heads, n_kv_heads, bh // n_heads,
                    bh % n_heads)


@numba.njit(cache=True, fastmath=True)
def attend_head(out, att, qkv, key_cache, value_cache, streams, positions, n_heads, n_kv_heads, b, h):
    """Causal attention of query head h of row b over its stream's cache (rows 0..pos): out[b, head h's columns]."""
    hs = out.shape[1] // n_heads  # out is (B, QD)
    kv_mul = n_heads // n_kv_heads  # query heads per key/value head
    scale = np.float32(1.0 / math.sqrt(hs))
    s, p = streams[b], positions[b]
    # contiguous 1-D views with non-negative indices, so that LLVM vectorizes the loops over hs
    qh = qkv[b, h * hs:(h + 1) * hs]
    oh = out[b, h * hs:(h + 1) * hs]
    ah = att[b, h]
    kc, vc = key_cache[s, h // kv_mul], value_cache[s, h // kv_mul]  # (T, hs) each, contiguous over t
    # att = softmax(q . k_t / sqrt(hs)) over t = 0..p; cache rows t, m+t, 2m+t, 3m+t at a time: four
    # sequential streams per thread (decode reads the cache from memory, the weights having evicted it)
    n = p + 1
    m = n // 4
    for t in range(m):
        k0, k1, k2, k3 = kc[t], kc[m + t], kc[2 * m + t], kc[3 * m + t]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(hs):
            a0 += qh[i] * k0[i]
            a1 += qh[i] * k1[i]
            a2 += qh[i] * k2[i]
            a3 += qh[i] * k3[i]
        ah[t], ah[m + t], ah[2 * m + t], ah[3 * m + t] = a0 * scale, a1 * scale, a2 * scale, a3 * scale
    for t in range(4 * m, n):
        kh = kc[t]
        a = np.float32(0.0)
        for i in range(hs):
            a += qh[i] * kh[i]
        ah[t] = a * scale
    amax = np.float32(-np.inf)
    for t in range(n):
        amax = max(amax, ah[t])
    asum = np.float32(0.0)
    for t in range(n):
        ah[t] = exp_f32(ah[t] - amax)
        asum += ah[t]
    inv = np.float32(1.0) / asum
    oh[:] = 0.0
    for t in range(m):  # out = att @ v, the same four rows at a time
        v0, v1, v2, v3 = vc[t], vc[m + t], vc[2 * m + t], vc[3 * m + t]
        c0, c1, c2, c3 = ah[t] * inv, ah[m + t] * inv, ah[2 * m + t] * inv, ah[3 * m + t] * inv
        for i in range(hs):
            oh[i] += c0 * v0[i] + c1 * v1[i] + c2 * v2[i] + c3 * v3[i]
    for t in range(4 * m, n):
        a = ah[t] * inv
        vh = vc[t]
        for i in range(hs):
            oh[i] += a * vh[i]


@numba.njit(cache=True, fastmath=True, inline="always")
def _silu_mul(g, u):
    """silu(g) * u, SwiGLU of one gate value g and one up value u (exp_f32: a loop of these vectorizes)."""
    return g / (np.float32(1.0) + exp_f32(-g)) * u


@numba.njit(cache=True, fastmath=True)
def _swiglu_row(out, h13, b):
    H = out.shape[1]
    for i in range(H):
        out[b, i] = _silu_mul(h13[b, i], h13[b, H + i])


@numba.njit(cache=True, parallel=True, fastmath=True)
def swiglu_forward(out, h13):
    """out = silu(h1) * h3 where h13 is (B, 2H) = [w1 x | w3 x] and out is (B, H).

    Rows in parallel when there are several; one row stays serial, cheaper than waking the other thread."""
    B = out.shape[0]
    if B == 1:
        _swiglu_row(out, h13, 0)
    else:
        for b in numba.prange(B):
            _swiglu_row(out, h13, b)


@numba.njit(cache=True, parallel=True, fastmath=True)
def matmul_forward(out, inp, weight):
    """out (B, OC) = inp (B, C) @ weight (OC, C).T for a few rows B (decode, batched decode).

    Fewer than 4 input rows (decode: memory-bound): the weight is cut into STREAMS parts of Q rows, and
    prange step q reads row q of every part, so each thread reads STREAMS long sequential streams of
    memory (its half of each part). Measured on the 2-core box: 8 such streams read 10-25% faster than
    blocks of 4 consecutive rows (4 short streams that restart every block, which the hardware prefetcher
    follows badly, worst for stories15M's 1152-byte rows). The dot products of the 8 rows are
    rowdot.dot_rows_f32, which also prefetches each stream ahead across the 4 KiB pages the hardware
    prefetcher stops at (+2-15% decode).
    4 or more input rows (batched decode, closer to compute-bound): 4 such streams, each step's 4 weight rows
    against input rows four at a time through rowdot.dot_block_f32 (8 loads feed 16 FMAs), the rest one at a time
    (8 stories15M rows: +15% over blocks of 4 consecutive rows with a software prefetch of the next block).
    """
    B = inp.shape[0]
    OC = weight.shape[0]
    if B < 4:
        Q = OC // STREAMS
        for q in numba.prange(Q):
            matmul_decode_step(out, inp, weight, q, Q)
        matmul_tail_rows(out, inp, weight, STREAMS * Q)
        return
    Q = OC // 4
    for q in numba.prange(Q):
        b = 0
        while b + 4 <= B:  # four input rows at a time: 8 loads feed 16 FMAs (batched decode is compute-bound)
            s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33 = dot_block_f32(
                inp, b, 4, weight, q, Q, 4)
            out[b, q], out[b, q + Q], out[b, q + 2 * Q], out[b, q + 3 * Q] = s00, s01, s02, s03
            out[b + 1, q], out[b + 1, q + Q], out[b + 1, q + 2 * Q], out[b + 1, q + 3 * Q] = s10, s11, s12, s13
            out[b + 2, q], out[b + 2, q + Q], out[b + 2, q + 2 * Q], out[b + 2, q + 3 * Q] = s20, s21, s22, s23
            out[b + 3, q], out[b + 3, q + Q], out[b + 3, q + 2 * Q], out[b + 3, q + 3 * Q] = s30, s31, s32, s33
            b += 4
        while b < B:
            out[b, q], out[b, q + Q], out[b, q + 2 * Q], out[b, q + 3 * Q] = dot_block_f32(inp, b, 1, weight, q, Q, 4)
            b += 1
    matmul_tail_rows(out, inp, weight, 4 * Q)


@numba.njit(cache=True, fastmath=True, inline="always")
def matmul_decode_step(out, inp, weight, q, Q):
    """Step q of matmul_forward's decode loop (B < 4): weight rows q + k Q, k < STREAMS, against every input row."""
    for b in range(inp.shape[0]):
        s0, s1, s2, s3, s4, s5, s6, s7 = dot_rows_f32(inp[b], weight, q, Q, STREAMS)
        out[b, q], out[b, q + Q], out[b, q + 2 * Q], out[b, q + 3 * Q] = s0, s1, s2, s3
        out[b, q + 4 * Q], out[b, q + 5 * Q], out[b, q + 6 * Q], out[b, q + 7 * Q] = s4, s5, s6, s7


@numba.njit(cache=True, fastmath=True)
def matmul_tail_rows(out, inp, weight, first):
    """Output rows first..OC-1 one at a time (the rows left over by the streams)."""
    for o in range(first, weight.shape[0]):
        for b in range(inp.shape[0]):
            s0 = np.float32(0.0)
            for i in range(inp.shape[1]):
                s0 += weight_f32(weight[o, i]) * inp[b, i]
            out[b, o] = s0


@numba.njit(cache=True, fastmath=True)
def embed_row(x, tok_emb, token):
    """x (C,) = row `token` of the embedding table tok_emb (V, C), widened to float32."""
    for j in range(x.shape[0]):
        x[j] = weight_f32(tok_emb[token, j])


@numba.njit(cache=True, parallel=True, fastmath=True)
def widen_rows(out, weight, first):
    """out (n, IC) float32 = weight rows first..first+n-1, widened from bf16 / fp16 bits (prefill: a block of a
    matrix for sgemm)."""
    for i in numba.prange(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = weight_f32(weight[first + i, j])


@numba.njit(cache=True, fastmath=True, inline="always")
def swiglu_decode_step(out, inp, w13, q, Q):
    """Step q of matmul_swiglu_forward's decode loop (B < 4, Q = H / 4): w1 rows q + k Q and w3 rows
    H + q + k Q = q + (4 + k) Q, k < 4, against every input row; SwiGLU of the 4 outputs."""
    for b in range(inp.shape[0]):
        g0, g1, g2, g3, u0, u1, u2, u3 = dot_rows_f32(inp[b], w13, q, Q, STREAMS)
        out[b, q], out[b, q + Q] = _silu_mul(g0, u0), _silu_mul(g1, u1)
        out[b, q + 2 * Q], out[b, q + 3 * Q] = _silu_mul(g2, u2), _silu_mul(g3, u3)


@numba.njit(cache=True, parallel=True, fastmath=True)
def matmul_swiglu_forward(out, inp, w13):
    """out (B, H) = silu(inp @ w1.T) * (inp @ w3.T) with w13 (2H, C) = [w1; w3], for B < 4 and H % 4 == 0.

    matmul_forward's 8 streams over w13 are 4 over w1 and the same 4 rows of w3 (row j and row H + j are
    streams k and k + 4 at one prange step), so each step has both halves of 4 outputs and applies SwiGLU
    right there: no serial pass (and no 2H-wide write) after the matmul. Other shapes: matmul_forward, then
    swiglu_forward (the caller's choice: a parallel function called from this one would run serially).
    """
    B = inp.shape[0]
    H = out.shape[1]
    assert H % 4 == 0, "matmul_swiglu_forward: H % 4 == 0 only"
    if B >= 4:  # batched: matmul_forward's 4 streams over w13 are rows q, q + H/2 of w1 and the same of w3
        Q = H // 2
        for q in numba.prange(Q):
            b = 0
            while b + 4 <= B:  # weight rows q, q + Q (w1) and H + q = q + 2Q, q + 3Q (w3)
                g00, g01, u00, u01, g10, g11, u10, u11, g20, g21, u20, u21, g30, g31, u30, u31 = dot_block_f32(
                    inp, b, 4, w13, q, Q, 4)
                out[b, q], out[b, q + Q] = _silu_mul(g00, u00), _silu_mul(g01, u01)
                out[b + 1, q], out[b + 1, q + Q] = _silu_mul(g10, u10), _silu_mul(g11, u11)
                out[b + 2, q], out[b + 2, q + Q] = _silu_mul(g20, u20), _silu_mul(g21, u21)
                out[b + 3, q], out[b + 3, q + Q] = _silu_mul(g30, u30), _silu_mul(g31, u31)
                b += 4
            while b < B:
                g0, g1, u0, u1 = dot_block_f32(inp, b, 1, w13, q, Q, 4)
                out[b, q], out[b, q + Q] = _silu_mul(g0, u0), _silu_mul(g1, u1)
                b += 1
        return
    Q = H // 4  # = 2H / STREAMS
    for q in numba.prange(Q):
        swiglu_decode_step(out, inp, w13, q, Q)


# -----------------------------------------------------------------------------
# the forward pass of a few rows, fused


@numba.njit(cache=True, fastmath=True)
def forward_rows(logits, rows, tokens, streams, positions, acts, weights, key_cache, value_cache, cos, sin,
                 n_heads, n_kv_heads, eps):
    """run.c's forward for B rows (one token each) in one call; logits (R, V) for the rows in `rows` (R,).

    tokens, streams, positions are (B,) int. acts = (x, xb, xb2, qkv, att, atty, hb13, hb, xf): preallocated
    activations of at least B rows (xf: R rows; qkv (B, QD + 2*KV), atty (B, QD)). weights = (tok_emb, rms_att,
    wqkv, wo, rms_ffn, w13, w2, rms_final, wcls), the matrices stacked over layers: wqkv (L, QD + 2*KV, C),
    wo (L, C, QD), w13 (L, 2H, C), ...
    key_cache, value_cache are (L, S, NKV, T, hs).
    """
    x, xb, xb2, qkv, att, atty, hb13, hb, xf = acts
    tok_emb, rms_att, wqkv, wo, rms_ffn, w13, w2, rms_final, wcls = weights
    B, R = tokens.shape[0], rows.shape[0]
    x, xb, xb2, qkv, att, atty = x[:B], xb[:B], xb2[:B], qkv[:B], att[:B], atty[:B]
    hb13, hb, xf = hb13[:B], hb[:B], xf[:R]
    no_rows = x[:0]
    for b in range(B):
        embed_row(x[b], tok_emb, tokens[b])
    for layer in range(wqkv.shape[0]):
        # attention block: x += wo @ attention(rope(wqkv @ rmsnorm(x)))
        residual_rmsnorm(x, no_rows, xb, rms_att[layer], eps)
        matmul_forward(qkv, xb, wqkv[layer])
        attention_forward(atty, att, qkv, key_cache[layer], value_cache[layer], streams, positions, cos, sin,
                          n_heads, n_kv_heads)
        matmul_forward(xb2, atty, wo[layer])
        # ffn block: x += w2 @ (silu(w1 @ rmsnorm(x)) * (w3 @ rmsnorm(x)))
        residual_rmsnorm(x, xb2, xb, rms_ffn[layer], eps)
        if hb.shape[1] % 4 == 0:  # SwiGLU inside the matmul's threads
            matmul_swiglu_forward(hb, xb, w13[layer])
        else:
            matmul_forward(hb13, xb, w13[layer])
            swiglu_forward(hb, hb13)
        matmul_forward(xb2, hb, w2[layer])
        x += xb2
    if R > 0:
        for r in range(R):
            xf[r] = x[rows[r]]
        residual_rmsnorm(xf, no_rows, xf, rms_final, eps)
        matmul_forward(logits[:R], xf, wcls)


# Q8_0 group size of the decode kernel below (llama2.c's export default; other sizes take matmul_q8's paths)
DECODE_GROUP = 64


@numba.njit(cache=True, parallel=True, fastmath=True)
def linear_q8_decode(out, inp, wq, ws, xq, xs, swiglu, n_threads):
    """runq.c's quantize(x) then matmul for B < 4 rows, group size DECODE_GROUP, in one parallel region.

    out (B, OC) = inp (B, IC) @ w.T with w Q8_0 (wq (OC, IC) int8, ws (OC, IC / 64)); or, with swiglu, out (B, H)
    = silu(inp @ w1.T) * (inp @ w3.T) for w = [w1; w3] (2H rows, H even). The region has n_threads parts (numba's
    thread count, passed in: reading it here would stop numba from caching the function); each quantizes the
    input rows itself into its own rows of the scratch xq, xs, so no serial pass comes before the region, then
    reads its share of the Q8_STREAMS streams (rows q + k Q, Q = OC / 4). With swiglu those 4 rows
    are w1 rows q, q + Q and w3 rows q, q + Q (Q = H / 2): both halves of 2 outputs at once, as in
    matmul_swiglu_forward. Measured on the 110M shape (in-process A/B): the serial quantize and SwiGLU passes
    between the regions cost ~5% and ~4% of an int8 token.
    """
    B = inp.shape[0]
    OC = wq.shape[0]
    Q = OC // Q8_STREAMS
    nt = max(1, min(n_threads, xq.shape[0] // B))  # parts that fit in the scratch
    for tid in numba.prange(nt):  # one iteration per thread: its rows of the scratch, then its share of q
        q8_decode_part(out, inp, wq, ws, xq[tid * B:(tid + 1) * B], xs[tid * B:(tid + 1) * B], swiglu,
                       tid * Q // nt, (tid + 1) * Q // nt)
    q8_decode_tail(out, wq, ws, xq, xs)  # thread 0's scratch


@numba.njit(cache=True, fastmath=True)
def q8_decode_part(out, inp, wq, ws, xqt, xst, swiglu, q0, q1):
    """A thread's part of linear_q8_decode: quantize the input rows into its scratch xqt, xst, then steps q0..q1-1."""
    Q = wq.shape[0] // Q8_STREAMS
    for b in range(inp.shape[0]):
        quantize_row(xqt[b], xst[b], inp[b], DECODE_GROUP)
    for q in range(q0, q1):
        for b in range(inp.shape[0]):
            s0, s1, s2, s3 = dot_q8_rows(xqt[b], wq, ws, xst[b], q, Q, Q8_STREAMS, DECODE_GROUP)
            if swiglu:
                out[b, q], out[b, q + Q] = _silu_mul(s0, s2), _silu_mul(s1, s3)
            else:
                out[b, q], out[b, q + Q], out[b, q + 2 * Q], out[b, q + 3 * Q] = s0, s1, s2, s3


@numba.njit(cache=True, fastmath=True)
def q8_decode_tail(out, wq, ws, xq, xs):
    """The last OC % Q8_STREAMS output rows of linear_q8_decode (none with swiglu: 2H % 4 == 0), from quantized
    input rows xq, xs."""
    for o in range(Q8_STREAMS * (wq.shape[0] // Q8_STREAMS), wq.shape[0]):
        for b in range(out.shape[0]):
            out[b, o] = dot_q8_rows(xq[b], wq, ws, xs[b], o, 1, 1, DECODE_GROUP)[0]


@numba.njit(cache=True, fastmath=True)
def linear_q8(out, inp, wq, ws, xq, xs, n_threads):
    """out (B, OC) = inp (B, IC) @ w.T with w Q8_0 (wq (OC, IC) int8, ws (OC, IC / gs)): runq.c's quantize(x)
    then matmul, using the scratch xq, xs (>= B rows; decode: up to 3 * n_threads) for the quantized rows of inp."""
    gs = inp.shape[1] // ws.shape[1]
    if inp.shape[0] < 4 and gs == DECODE_GROUP:
        linear_q8_decode(out, inp, wq, ws, xq, xs, False, n_threads)
        return
    quantize_rows(xq, xs, inp, gs)  # xq, xs are full-width C arrays: the kernels use the first columns
    matmul_q8(out, xq, xs, wq, ws, gs)


@numba.njit(cache=True, fastmath=True)
def forward_rows_q8(logits, rows, tokens, streams, positions, acts, qacts, weights, key_cache, value_cache,
                    cos, sin, n_heads, n_kv_heads, eps, n_threads):
    """forward_rows with Q8_0 matrices (runq.c's forward): weights = (tok_emb fp32 (V, C), rms_att,
    wqkv_q, wqkv_s, wo_q, wo_s, rms_ffn, w13_q, w13_s, w2_q, w2_s, rms_final, wcls_q, wcls_s), each
    matrix int8 values (L, OC, IC) and fp32 scales (L, OC, IC / gs); qacts = (xq, xs) scratch; n_threads is
    numba.get_num_threads() (see linear_q8_decode)."""
    x, xb, xb2, qkv, att, atty, hb13, hb, xf = acts
    xq, xs = qacts
    tok_emb, rms_att, wqkv_q, wqkv_s, wo_q, wo_s, rms_ffn, w13_q, w13_s, w2_q, w2_s, rms_final, wcls_q, wcls_s = weights
    B, R = tokens.shape[0], rows.shape[0]
    x, xb, xb2, qkv, att, atty = x[:B], xb[:B], xb2[:B], qkv[:B], att[:B], atty[:B]
    hb13, hb, xf = hb13[:B], hb[:B], xf[:R]
    no_rows = x[:0]
    for b in range(B):
        embed_row(x[b], tok_emb, tokens[b])
    for layer in range(wqkv_q.shape[0]):
        residual_rmsnorm(x, no_rows, xb, rms_att[layer], eps)
        linear_q8(qkv, xb, wqkv_q[layer], wqkv_s[layer], xq, xs, n_threads)
        attention_forward(atty, att, qkv, key_cache[layer], value_cache[layer], streams, positions, cos, sin,
                          n_heads, n_kv_heads)
        linear_q8(xb2, atty, wo_q[layer], wo_s[layer], xq, xs, n_threads)
        residual_rmsnorm(x, xb2, xb, rms_ffn[layer], eps)
        if B < 4 and xb.shape[1] // w13_s.shape[2] == DECODE_GROUP and hb.shape[1] % 2 == 0:
            linear_q8_decode(hb, xb, w13_q[layer], w13_s[layer], xq, xs, True, n_threads)  # SwiGLU inside the threads
        else:
            linear_q8(hb13, xb, w13_q[layer], w13_s[layer], xq, xs, n_threads)
            swiglu_forward(hb, hb13)
        linear_q8(xb2, hb, w2_q[layer], w2_s[layer], xq, xs, n_threads)
        x += xb2
    if R > 0:
        for r in range(R):
            xf[r] = x[rows[r]]
        residual_rmsnorm(xf, no_rows, xf, rms_final, eps)
        linear_q8(logits[:R], xf, wcls_q, wcls_s, xq, xs, n_threads)
