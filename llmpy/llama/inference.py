"""Llama 2 forward pass with a KV cache: run.c's `forward` (fp32) and runq.c's (int8), over many rows.

One forward call takes B rows, each a (token, stream, position): a single token at `pos` (run.c's
forward), a whole prompt at positions 0..T-1 of one stream (prefill: matrix-matrix products), or
one token from each of B independent streams (batched generation, sharing every weight read).
Each stream has its own KV cache, preallocated: key_cache is (L, streams, seq_len, KV).

The matmuls are BLAS (fp32: sgemv for one row, sgemm for many) or the numba Q8_0 kernel (int8);
everything between them (rmsnorm, RoPE, attention, SwiGLU) is a few fused numba kernels, so a
15M-parameter model is not dominated by per-operation Python overhead.

Not handled: RoPE scaling, rope theta other than 10000, sliding windows, biases in the linears.
"""

import math
import os

import numba
import numpy as np

from llmpy.errors import LlmpyError
from llmpy.formats.llama2c import rope_tables
from llmpy.llama.quant import QTensor, dequantize, matmul_q8, quantize_rows

RMS_EPS = 1e-5
DEFAULT_MAX_ROWS = 256  # rows per forward call; prefill of longer prompts is split into chunks
SMALL_BATCH = 32  # up to this many rows, fp32 matmuls use matmul_forward instead of BLAS sgemm
# One-row fp32 matmuls: BLAS sgemv for models with dim >= this, the numba kernel for smaller ones. Measured
# on the 2-core box: stories110M decodes at 89-99% of the bandwidth limit with sgemv and 74-79% with
# numba; stories15M (288x288 .. 1536x288 matrices, where OpenBLAS runs one thread) 56% with sgemv and
# 63-78% with numba. The two are not mixed in one model: OpenBLAS and OpenMP workers fight over cores.
BLAS_GEMV_MIN_DIM = 512


def tune_openmp_waiting():
    """Let OpenMP workers spin only briefly between parallel regions, then sleep (unless the user chose).

    Call before the first numba parallel kernel runs (entry points only). Measured on the 2-core box,
    one small matmul region: on cores busy with other processes, fully spinning workers (libgomp's
    default) take 8 ms per region waiting for each other, passive ones 27 us and 10000 spins 0.4 ms;
    on an idle machine passive waiting halves stories15M's decode speed (thread wake-ups are slow in
    the VM) while 10000 spins stay close to full spinning. 10000 spins is the compromise.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")


# -----------------------------------------------------------------------------
# building blocks (numba)

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
def attention_forward(out, qkv, key_cache, value_cache, streams, positions, cos, sin, n_heads, n_kv_heads):
    """RoPE on q and k, store k and v in the cache, causal grouped-query attention.

    qkv is (B, C + 2*KV) = [q | k | v] per row; key_cache, value_cache are (S, T, KV) for one layer;
    streams, positions are (B,) int; cos, sin are (T, hs/2); out is (B, C).
    All rows are stored first, so rows of one stream at later positions (a prompt) see the earlier ones.
    """
    B = qkv.shape[0]
    C = out.shape[1]
    hs = C // n_heads
    KV = n_kv_heads * hs
    kv_mul = n_heads // n_kv_heads  # query heads per key/value head
    scale = np.float32(1.0 / math.sqrt(hs))
    for b in range(B):
        s, p = streams[b], positions[b]
        # RoPE: rotate pairs (i, i+1) within each head by pos * theta^(-(i % hs) / hs), as run.c does
        for i in range(0, C, 2):
            j = (i % hs) // 2
            fcr, fci = cos[p, j], sin[p, j]
            v0, v1 = qkv[b, i], qkv[b, i + 1]
            qkv[b, i] = v0 * fcr - v1 * fci
            qkv[b, i + 1] = v0 * fci + v1 * fcr
            if i < KV:
                v0, v1 = qkv[b, C + i], qkv[b, C + i + 1]
                key_cache[s, p, i] = v0 * fcr - v1 * fci
                key_cache[s, p, i + 1] = v0 * fci + v1 * fcr
        for i in range(KV):
            value_cache[s, p, i] = qkv[b, C + KV + i]
    att = np.empty(key_cache.shape[1], dtype=np.float32)
    for b in range(B):
        s, p = streams[b], positions[b]
        for h in range(n_heads):
            # contiguous 1-D views with non-negative indices, so that LLVM vectorizes the loops over hs
            qh = qkv[b, h * hs:(h + 1) * hs]
            oh = out[b, h * hs:(h + 1) * hs]
            k0 = (h // kv_mul) * hs
            # att = softmax(q . k_t / sqrt(hs)) over t = 0..p
            amax = np.float32(-np.inf)
            for t in range(p + 1):
                kh = key_cache[s, t, k0:k0 + hs]
                a = np.float32(0.0)
                for i in range(hs):
                    a += qh[i] * kh[i]
                a *= scale
                att[t] = a
                amax = max(amax, a)
            asum = np.float32(0.0)
            for t in range(p + 1):
                att[t] = np.exp(att[t] - amax)
                asum += att[t]
            inv = np.float32(1.0) / asum
            oh[:] = 0.0
            for t in range(p + 1):
                a = att[t] * inv
                vh = value_cache[s, t, k0:k0 + hs]
                for i in range(hs):
                    oh[i] += a * vh[i]


@numba.njit(cache=True, fastmath=True)
def swiglu_forward(out, h13):
    """out = silu(h1) * h3 where h13 is (B, 2H) = [w1 x | w3 x] and out is (B, H)."""
    B, H = out.shape
    for b in range(B):
        for i in range(H):
            g = h13[b, i]
            out[b, i] = g / (np.float32(1.0) + np.exp(-g)) * h13[b, H + i]


@numba.njit(cache=True, parallel=True, fastmath=True)
def matmul_forward(out, inp, weight):
    """out (B, OC) = inp (B, C) @ weight (OC, C).T for a few rows B (batched decode).

    prange over output rows: each weight row is read from memory once for all B input rows, four
    input rows per pass so every loaded weight value feeds four FMAs. (OpenBLAS sgemm with B ~ 8
    is far from both this and the memory-bandwidth limit, so small batches use this kernel.)
    """
    B, C = inp.shape
    OC = weight.shape[0]
    for o in numba.prange(OC):
        w = weight[o]
        b = 0
        while b + 4 <= B:
            x0, x1, x2, x3 = inp[b], inp[b + 1], inp[b + 2], inp[b + 3]
            s0 = s1 = s2 = s3 = np.float32(0.0)
            for i in range(C):
                wi = w[i]
                s0 += x0[i] * wi
                s1 += x1[i] * wi
                s2 += x2[i] * wi
                s3 += x3[i] * wi
            out[b, o], out[b + 1, o], out[b + 2, o], out[b + 3, o] = s0, s1, s2, s3
            b += 4
        while b < B:
            x0 = inp[b]
            s0 = np.float32(0.0)
            for i in range(C):
                s0 += x0[i] * w[i]
            out[b, o] = s0
            b += 1


# -----------------------------------------------------------------------------
# the model

def _stack_rows(mats):
    """Concatenate matrices (fp32 or QTensor) along the output dimension: q, k, v -> qkv."""
    if isinstance(mats[0], QTensor):
        return QTensor(np.concatenate([m.q for m in mats]), np.concatenate([m.s for m in mats]), mats[0].group_size)
    return np.ascontiguousarray(np.concatenate(mats), dtype=np.float32)


def _matrix(w):
    return w if isinstance(w, QTensor) else np.ascontiguousarray(w, dtype=np.float32)


class Transformer:
    """Weights packed for inference plus the run state (activations and KV cache), like run.c's Transformer.

    Packing: per layer wqkv = [wq; wk; wv] and w13 = [w1; w3], so one matmul does what three or two
    do in run.c (fewer calls, same bytes). int8 models keep QTensors and dequantize the embedding
    table once (runq.c does too).
    """

    def __init__(self, config, weights, n_streams=1, max_rows=DEFAULT_MAX_ROWS):
        self.config = config
        c = config
        L = c.n_layers
        self.quantized = isinstance(weights["wq"][0], QTensor)
        self.group_size = weights["wq"][0].group_size if self.quantized else None
        emb = weights["tok_emb"]
        self.tok_emb = dequantize(emb) if isinstance(emb, QTensor) else emb  # (V, C), rows read per token
        self.rms_att = np.ascontiguousarray(weights["rms_att"], dtype=np.float32)  # (L, C)
        self.rms_ffn = np.ascontiguousarray(weights["rms_ffn"], dtype=np.float32)  # (L, C)
        self.rms_final = np.ascontiguousarray(weights["rms_final"], dtype=np.float32)  # (C,)
        self.wqkv = [_stack_rows([weights["wq"][i], weights["wk"][i], weights["wv"][i]]) for i in range(L)]
        self.wo = [_matrix(weights["wo"][i]) for i in range(L)]
        self.w13 = [_stack_rows([weights["w1"][i], weights["w3"][i]]) for i in range(L)]
        self.w2 = [_matrix(weights["w2"][i]) for i in range(L)]
        self.wcls = _matrix(weights["wcls"])  # (V, C)
        self.cos, self.sin = rope_tables(c)  # (T, hs/2) each
        self.use_blas_gemv = c.dim >= BLAS_GEMV_MIN_DIM
        self.n_streams = n_streams
        self.max_rows = max(max_rows, n_streams)
        R, C, KV, H = self.max_rows, c.dim, c.kv_dim, c.hidden_dim
        # run state: activations for up to R rows, llama2.c's names
        self.x = np.zeros((R, C), np.float32)  # residual stream
        self.xb = np.zeros((R, C), np.float32)  # inside a residual branch
        self.xb2 = np.zeros((R, C), np.float32)  # branch output, added to x
        self.qkv = np.zeros((R, C + 2 * KV), np.float32)
        self.hb13 = np.zeros((R, 2 * H), np.float32)  # [w1 x | w3 x]
        self.hb = np.zeros((R, H), np.float32)  # silu(w1 x) * w3 x
        self.logits = np.zeros((n_streams, c.vocab_size), np.float32)
        self.key_cache = np.zeros((L, n_streams, c.seq_len, KV), np.float32)
        self.value_cache = np.zeros((L, n_streams, c.seq_len, KV), np.float32)
        if self.quantized:
            gs = self.group_size
            self.xq = np.zeros((R, max(C, H)), np.int8)  # quantized activations
            self.xs = np.zeros((R, max(C, H) // gs), np.float32)  # their scales
        self._no_rows = np.zeros((0, C), np.float32)

    @classmethod
    def from_file(cls, path, n_streams=1, max_rows=DEFAULT_MAX_ROWS):
        from llmpy.formats.llama2c import read_llama2c

        config, weights, _, _ = read_llama2c(path)
        return cls(config, weights, n_streams, max_rows)

    def weight_bytes_per_token(self):
        """Bytes of weights one decode step reads: every matrix once and one embedding row."""
        def nbytes(w):
            return w.q.nbytes + w.s.nbytes if isinstance(w, QTensor) else w.nbytes
        mats = self.wqkv + self.wo + self.w13 + self.w2 + [self.wcls]
        norms = self.rms_att.nbytes + self.rms_ffn.nbytes + self.rms_final.nbytes
        return sum(nbytes(w) for w in mats) + norms + self.tok_emb[0].nbytes

    def linear(self, out, inp, w):
        """out (B, OC) = inp (B, IC) @ w (OC, IC).T, with w fp32 or Q8_0."""
        if isinstance(w, QTensor):
            B, n = inp.shape
            xq, xs = self.xq[:B, :n], self.xs[:B, :n // w.group_size]
            quantize_rows(xq, xs, inp, w.group_size)
            matmul_q8(out, xq, xs, w.q, w.s, w.group_size)
        elif inp.shape[0] == 1 and self.use_blas_gemv:
            np.matmul(w, inp[0], out=out[0])  # sgemv: one pass over the weights
        elif inp.shape[0] <= SMALL_BATCH:
            matmul_forward(out, inp, w)  # a few streams: one pass over the weights for all of them
        else:
            np.matmul(inp, w.T, out=out)  # sgemm (prefill)

    def forward(self, tokens, positions, streams=None, logits="last"):
        """Run B rows through the model; returns logits.

        tokens, positions, streams: (B,) ints (streams default to 0). logits: "last" -> (S', V) for the
        last row of each distinct stream in row order (a view into preallocated memory, valid until the
        next call); "all" -> (B, V), a new array; "none" -> None (prefill whose logits are not needed).
        """
        c = self.config
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        B = tokens.shape[0]
        streams = np.zeros(B, np.int64) if streams is None else np.asarray(streams, dtype=np.int64).reshape(-1)
        if B > self.max_rows:
            raise ValueError(f"{B} rows in one forward call; this Transformer was built for at most {self.max_rows}")
        if positions.min() < 0 or positions.max() >= c.seq_len:
            raise LlmpyError(f"position {positions.max()} is outside the context of {c.seq_len} tokens (seq_len)")
        if tokens.min() < 0 or tokens.max() >= c.vocab_size:
            raise LlmpyError(f"token id {tokens.max()} is outside the vocabulary of {c.vocab_size}")
        x, xb, xb2, qkv = self.x[:B], self.xb[:B], self.xb2[:B], self.qkv[:B]
        hb13, hb = self.hb13[:B], self.hb[:B]
        x[:] = self.tok_emb[tokens]  # (B, C)
        dx = self._no_rows  # the previous layer's last branch output, added in the next residual_rmsnorm
        for layer in range(c.n_layers):
            # attention block: x += wo @ attention(rope(wqkv @ rmsnorm(x)))
            residual_rmsnorm(x, dx, xb, self.rms_att[layer], RMS_EPS)
            self.linear(qkv, xb, self.wqkv[layer])
            attention_forward(xb, qkv, self.key_cache[layer], self.value_cache[layer], streams, positions,
                              self.cos, self.sin, c.n_heads, c.n_kv_heads)
            self.linear(xb2, xb, self.wo[layer])
            # ffn block: x += w2 @ (silu(w1 @ rmsnorm(x)) * (w3 @ rmsnorm(x)))
            residual_rmsnorm(x, xb2, xb, self.rms_ffn[layer], RMS_EPS)
            self.linear(hb13, xb, self.w13[layer])
            swiglu_forward(hb, hb13)
            self.linear(xb2, hb, self.w2[layer])
            dx = xb2
        if logits == "none":
            x += dx
            return None
        if logits == "all":
            rows = np.arange(B)
            out = np.empty((B, c.vocab_size), np.float32)
        else:
            # last row of each stream: where the next row's stream differs, or the final row
            rows = np.nonzero(np.append(streams[1:] != streams[:-1], True))[0]
            out = self.logits[:len(rows)] if len(rows) <= self.logits.shape[0] else np.empty((len(rows), c.vocab_size),
                                                                                            np.float32)
        xr, dxr = x[rows], dx[rows]  # copies: only the rows that need logits
        residual_rmsnorm(xr, dxr, xr, self.rms_final, RMS_EPS)
        self.linear(out, xr, self.wcls)
        return out

    def forward_token(self, token, pos, stream=0):
        """run.c's forward(transformer, token, pos): logits (V,) for one token."""
        return self.forward([token], [pos], [stream])[0]

    def prefill(self, tokens, stream=0, start=0, logits="last"):
        """Forward a whole prompt (positions start..start+T-1 of one stream), in chunks of max_rows rows."""
        tokens = np.asarray(tokens, dtype=np.int64)
        out = None
        for i in range(0, len(tokens), self.max_rows):
            chunk = tokens[i:i + self.max_rows]
            last = i + self.max_rows >= len(tokens)
            out = self.forward(chunk, np.arange(start + i, start + i + len(chunk)), np.full(len(chunk), stream),
                               logits if last else "none")
        return out
