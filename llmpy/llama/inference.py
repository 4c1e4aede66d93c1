"""Llama 2 forward pass with a KV cache: run.c's `forward` (fp32) and runq.c's (int8), over many rows.

One forward call takes B rows, each a (token, stream, position): a single token at `pos` (run.c's
forward), a whole prompt at positions 0..T-1 of one stream (prefill: matrix-matrix products), or
one token from each of B independent streams (batched generation, sharing every weight read).
Each stream has its own KV cache, preallocated: key_cache is (L, streams, n_kv_heads, seq_len, hs), so that
the keys (and values) one head attends over are one contiguous stream of memory.

Up to SMALL_BATCH rows (decode, batched decode, short prompts) run as one fused numba call over all
layers (kernels.forward_rows / forward_rows_q8), so a 15M-parameter model is not dominated by
per-operation Python overhead; 1-3 rows (decode) under numba's OpenMP threads go further, through one
parallel region per token (decode.forward_decode). More rows (prefill) loop over the
layers in Python with BLAS sgemm (fp32) or the numba Q8_0 kernel (int8) and the same numba kernels in between.

Loading (Transformer.from_file) copies every weight out of the file's memory map into private memory, so
a model file replaced or truncated during a long run cannot crash it (no SIGBUS), and allocates the KV
cache for the header's seq_len or a shorter context chosen with max_seq_len.

Weight dtypes (Transformer's dtype): fp32; bf16, kept as bfloat16 bits in uint16 arrays and read as such by the
decode kernels (fp32 sums: rowdot.py), half the bytes per token; fp16, kept as float16 bits in int16 arrays (Numba
has no float16 arrays), read the same way; int8 (Q8_0 QTensors). Weights are kept in the dtype they come in unless
dtype= asks for fp32 or bf16 (fp32 -> bf16 rounds to nearest even, as PyTorch does) or quantize="q8" for Q8_0,
converted a matrix at a time (no transient fp32 copy of the model). Prefill of bf16 / fp16 weights widens
WIDEN_BYTES of a matrix at a time into fp32 scratch for sgemm.

RoPE tables follow config.rope_theta and rope_scaling (llmpy/llama/rope.py), RMSNorm config.norm_eps.

Heads may be wider or narrower than dim / n_heads (config.head_dim, Hugging Face's width-pruned models): the
queries and the attention output (atty) are then QD = n_heads * head_size wide instead of C.

Not handled: sliding windows, biases in the linears.
"""

import dataclasses
import os

import numba
import numpy as np

from llmpy.errors import LlmpyError
from llmpy.formats.llama2c import rope_tables
from llmpy.formats.llmc import bf16_to_fp32, fp32_to_bf16
from llmpy.llama import decode
from llmpy.llama.kernels import (
    attention_forward,
    embed_row,
    forward_rows,
    forward_rows_q8,
    linear_q8,
    matmul_forward,
    residual_rmsnorm,
    swiglu_forward,
    widen_rows,
)
from llmpy.llama.quant import QTensor, dequantize, quantize_q80
from llmpy.threads import ThreadGovernor, user_threads

RMS_EPS = 1e-5
DEFAULT_MAX_ROWS = 256  # rows per forward call; prefill of longer prompts is split into chunks
# Up to this many rows, a forward is one fused numba call (kernels.forward_rows) whose matmuls read each
# weight row once for all rows; more rows use BLAS sgemm, which wins once there is enough reuse per weight.
SMALL_BATCH = 32
DTYPES = ("fp32", "bf16", "fp16")  # float weights kept as float32, bfloat16 bits (uint16), float16 bits (int16)
STORED = {"fp32": np.float32, "bf16": np.uint16, "fp16": np.int16}
WIDEN_BYTES = 4 << 20  # prefill on bf16 / fp16 weights: fp32 scratch for this many bytes of a matrix per sgemm


def tune_openmp_waiting():
    """Let OpenMP workers spin a while between parallel regions, then sleep (unless the user chose).

    Call before the first numba parallel kernel runs (entry points only). A decode step is one parallel
    region (decode.py) or ~30-60 (kernels.forward_rows, prefill), with microseconds of Python or serial work
    between them; a worker that has gone to sleep takes long to wake in this VM. Measured on the 2-core box: libgomp's
    default spinning collapses when other processes hold the cores (8 ms per region waiting for each
    other, passive waiting 27 us), while 10000 spins (~0.4 ms) left the fused stories15M/110M decode
    10-30% slower than 100000 spins on an idle machine (where 100000 and 1000000 measured the same).
    100000 spins is the compromise: workers still go to sleep within milliseconds of a pause.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "100000")


# -----------------------------------------------------------------------------
# the model

def _bounds(a):
    """(min, max) of a 1-D int array as Python ints; for one row (decode) without two array reductions."""
    if a.shape[0] == 1:
        v = int(a[0])
        return v, v
    return int(a.min()), int(a.max())


def dtype_of(w):
    """The dtype a weight comes in: "int8" (QTensor), "bf16" (uint16 bits), "fp16" (float16) or "fp32"."""
    if isinstance(w, QTensor):
        return "int8"
    dt = np.asarray(w).dtype
    if dt != np.uint16 and dt.kind != "f":
        raise LlmpyError(f"a weight of dtype {dt}: give float32 / float16 arrays, bf16 bits as uint16, or Q8_0")
    return {np.dtype(np.uint16): "bf16", np.dtype(np.float16): "fp16"}.get(dt, "fp32")


def as_dtype(w, dtype, copy=True):
    """Weight w (float32 or other floats, uint16 bf16 bits, float16) stored as `dtype` (DTYPES): float32, uint16
    bfloat16 bits (rounded to nearest even from wider floats) or int16 float16 bits. copy=False: w itself when it
    is stored so already (a private array: no copy)."""
    have = dtype_of(w)
    w = np.asarray(w)
    if have == dtype and (dtype != "fp32" or w.dtype == np.float32):
        w = w.view(np.int16) if dtype == "fp16" else w
        return w.copy() if copy else w
    if w.ndim == 3:  # a stack of matrices (a loader's): one at a time, no transient copy of the whole stack
        out = np.empty(w.shape, STORED[dtype])
        for i in range(w.shape[0]):
            out[i] = as_dtype(w[i], dtype, copy=False)
        return out
    fp32 = bf16_to_fp32(w) if have == "bf16" else np.asarray(w, np.float32)
    if dtype == "bf16":
        return fp32_to_bf16(fp32)
    return fp32.astype(np.float16).view(np.int16) if dtype == "fp16" else fp32


def _stack(per_layer, dtype):
    """Stack per-layer matrices, each a list of pieces concatenated along the output dimension
    (q, k, v -> qkv), into one (L, OC, IC) array stored as dtype or one QTensor with (L, OC, IC) values.
    Filled a layer's piece at a time: no transient copy of the whole stack."""
    if isinstance(per_layer[0][0], QTensor):
        q = np.stack([np.concatenate([m.q for m in mats]) for mats in per_layer])
        s = np.stack([np.concatenate([m.s for m in mats]) for mats in per_layer])
        return QTensor(q, s, per_layer[0][0].group_size)
    out = np.empty((len(per_layer), sum(m.shape[0] for m in per_layer[0]), per_layer[0][0].shape[1]), STORED[dtype])
    for layer, mats in enumerate(per_layer):
        row = 0
        for m in mats:
            out[layer, row:row + m.shape[0]] = as_dtype(m, dtype, copy=False)
            row += m.shape[0]
    return out


def _stack_q8(per_layer, group_size):
    """_stack into one QTensor: each layer's matrix widened to fp32 and quantized by itself (Q8_0 on load, no fp32
    copy of the model; groups run along rows, so quantizing [wq; wk; wv] equals quantizing each)."""
    OC, IC = sum(m.shape[0] for m in per_layer[0]), per_layer[0][0].shape[1]
    q = np.empty((len(per_layer), OC, IC), np.int8)
    s = np.empty((len(per_layer), OC, IC // group_size), np.float32)
    for layer, mats in enumerate(per_layer):
        t = quantize_q80(np.concatenate([as_dtype(m, "fp32", copy=False) for m in mats]), group_size)
        q[layer], s[layer] = t.q, t.s
    return QTensor(q, s, group_size)


def q8_group_size(config):
    """Q8_0 group size for quantizing on load: 64 (llama2.c's export default), halved until it divides dim,
    hidden_dim and q_dim (the rows of every matrix)."""
    gs = 64
    while config.dim % gs or config.hidden_dim % gs or config.q_dim % gs:
        gs //= 2
    return gs


def _pair(w):
    """(values, scales) of a weight for the fused kernels; fp32 weights have no scales."""
    return (w.q, w.s) if isinstance(w, QTensor) else (w, None)


class Transformer:
    """Weights packed for inference plus the run state (activations and KV cache), like run.c's Transformer.

    Packing: per layer wqkv = [wq; wk; wv] and w13 = [w1; w3], so one matmul does what three or two
    do in run.c (fewer calls, same bytes), and every matrix is stacked over layers. int8 models keep
    QTensors and dequantize the embedding table once (runq.c does too).
    """

    def __init__(self, config, weights, n_streams=1, max_rows=DEFAULT_MAX_ROWS, threads=None, max_seq_len=None,
                 dtype=None, quantize=None):
        """threads: None picks them per call from the cores other processes leave free (llmpy/threads.py),
        unless NUMBA_NUM_THREADS / OMP_NUM_THREADS fix them; a number fixes them.
        max_seq_len: allocate the KV cache for min(seq_len, max_seq_len) positions (a shorter context).
        dtype: None keeps the weights' own dtype (fp32 arrays, uint16 bf16 bits, float16, Q8_0 QTensors);
        "fp32" or "bf16" converts float weights to it (a matrix at a time: no transient copy of the model).
        quantize: "q8" quantizes float weights to Q8_0 (q8_group_size) a layer's matrix at a time (runq.c's model,
        with the embedding table quantized and dequantized as export.py and runq.c do)."""
        # made first: the packing below gives its first look at the machine an interval to measure, so that a busy
        # machine is seen before the first token rather than after a few slow ones
        self.governor = ThreadGovernor(numba.config.NUMBA_NUM_THREADS, fixed=threads if threads else user_threads())
        if max_seq_len is not None:
            if max_seq_len < 1:
                raise LlmpyError(f"max_seq_len (the context) must be >= 1, got {max_seq_len}")
            config = dataclasses.replace(config, seq_len=min(config.seq_len, int(max_seq_len)))
        self.config = config
        c = config
        L = c.n_layers
        packed = weights.get("packed")  # stacks a loader built in private memory (llmpy.llama.hf_load): no copy
        first = packed["wqkv"] if packed is not None else weights["wq"][0]
        given_q8 = isinstance(first, QTensor)
        if dtype is not None and (dtype not in DTYPES or given_q8):
            raise LlmpyError(f"dtype must be one of {DTYPES} for float weights, got {dtype!r}"
                             + (" for int8 (Q8_0) weights: leave the dtype out" if given_q8 else ""))
        if quantize is not None and (quantize != "q8" or given_q8 or dtype is not None):
            raise LlmpyError(f"quantize must be None or 'q8', for float weights and without a dtype; got {quantize!r}"
                             + (" for int8 (Q8_0) weights: they are quantized already" if given_q8 else "")
                             + (f" with dtype {dtype!r}" if dtype is not None else ""))
        self.quantized = given_q8 or quantize == "q8"
        self.group_size = first.group_size if given_q8 else q8_group_size(c) if self.quantized else None
        self.dtype = "int8" if self.quantized else dtype or dtype_of(first)  # "fp32", "bf16", "fp16" or "int8"
        wdtype = "fp32" if self.quantized else self.dtype  # the embedding table of int8 models is fp32
        # every weight is copied into private memory (the stacks below copy anyway): a model file changed on
        # disk during a long run cannot touch it (no SIGBUS from a truncated memory map)
        emb = weights["tok_emb"]
        private = packed is not None  # the loader's arrays are private already
        wcls = weights["wcls"]
        if quantize:
            emb_q = quantize_q80(as_dtype(emb, "fp32", copy=False), self.group_size)
            wcls = emb_q if wcls is emb else quantize_q80(as_dtype(wcls, "fp32", copy=False), self.group_size)
            emb = emb_q
        if isinstance(emb, QTensor):
            self.tok_emb = dequantize(emb)  # (V, C)
        else:
            self.tok_emb = as_dtype(emb, wdtype, copy=not private)  # (V, C)
        self.rms_att = np.array(weights["rms_att"], dtype=np.float32)  # (L, C)
        self.rms_ffn = np.array(weights["rms_ffn"], dtype=np.float32)  # (L, C)
        self.rms_final = np.array(weights["rms_final"], dtype=np.float32)  # (C,)
        if packed is not None:
            per_layer = {k: [[packed[k][i]] for i in range(L)] for k in ("wqkv", "wo", "w13", "w2")}
        else:
            per_layer = {"wqkv": [[weights["wq"][i], weights["wk"][i], weights["wv"][i]] for i in range(L)],
                         "wo": [[weights["wo"][i]] for i in range(L)],
                         "w13": [[weights["w1"][i], weights["w3"][i]] for i in range(L)],
                         "w2": [[weights["w2"][i]] for i in range(L)]}
        if quantize:
            stacks = [_stack_q8(per_layer[k], self.group_size) for k in ("wqkv", "wo", "w13", "w2")]
        elif packed is not None:  # the loader's stacks themselves (or converted to dtype)
            stacks = [packed[k] if given_q8 else as_dtype(packed[k], wdtype, copy=False)
                      for k in ("wqkv", "wo", "w13", "w2")]
        else:
            stacks = [_stack(per_layer[k], wdtype) for k in ("wqkv", "wo", "w13", "w2")]
        # wqkv (L, QD+2KV, C), wo (L, C, QD), w13 (L, 2H, C), w2 (L, C, H)
        self.wqkv, self.wo, self.w13, self.w2 = stacks
        if isinstance(wcls, QTensor):
            self.wcls = QTensor(np.array(wcls.q), np.array(wcls.s, np.float32), wcls.group_size)  # (V, C)
        elif wcls is emb:
            self.wcls = self.tok_emb  # shared classifier: one copy
        else:
            self.wcls = as_dtype(wcls, wdtype, copy=not private)  # (V, C)
        self.cos, self.sin = rope_tables(c)  # (T, hs/2) each
        self.fused = True  # rows <= SMALL_BATCH in one numba call (tests turn it off to check one path vs the other)
        self.n_streams = n_streams
        self.max_rows = max(max_rows, n_streams)
        R, C, KV, H, QD = self.max_rows, c.dim, c.kv_dim, c.hidden_dim, c.q_dim
        # run state: activations for up to R rows, llama2.c's names
        self.x = np.zeros((R, C), np.float32)  # residual stream
        self.xb = np.zeros((R, C), np.float32)  # inside a residual branch
        self.xb2 = np.zeros((R, C), np.float32)  # branch output, added to x
        self.qkv = np.zeros((R, QD + 2 * KV), np.float32)
        self.att = np.zeros((SMALL_BATCH, c.n_heads, c.seq_len), np.float32)  # attention scores of SMALL_BATCH rows
        self.atty = np.zeros((R, QD), np.float32)  # attention output, the heads side by side (wo's input)
        self.hb13 = np.zeros((R, 2 * H), np.float32)  # [w1 x | w3 x]
        self.hb = np.zeros((R, H), np.float32)  # silu(w1 x) * w3 x
        self.xf = np.zeros((R, C), np.float32)  # final rmsnorm of the rows that need logits
        self.logits = np.zeros((n_streams, c.vocab_size), np.float32)
        kv_shape = (L, n_streams, c.n_kv_heads, c.seq_len, c.head_size)
        self.key_cache = np.zeros(kv_shape, np.float32)
        self.value_cache = np.zeros(kv_shape, np.float32)
        if self.quantized:
            gs = self.group_size
            Rq = max(R, 3 * numba.config.NUMBA_NUM_THREADS)  # decode: each thread quantizes its own copy of <= 3 rows
            self.xq = np.zeros((Rq, max(C, H, QD)), np.int16)  # quantized activations (int8 values)
            self.xs = np.zeros((Rq, max(C, H, QD) // gs), np.float32)  # their scales
        # decode in one parallel region (decode.forward_decode): each thread's copy of x and of the normed rows;
        # None = not decided yet (numba's threading layer is known once a parallel function has run)
        self.one_region = None
        self._priv = np.zeros((numba.config.NUMBA_NUM_THREADS, 2, 3, C), np.float32)
        self._sync = np.zeros(decode.SYNC_SIZE, np.int64)
        self._no_rows = np.zeros((0, C), np.float32)
        self._no_xq = np.zeros((0, C), np.int16)  # the quantized-row scratch decode.forward_decode takes (fp32: unused)
        self._row0 = np.zeros(1, np.int64)  # the rows that need logits when a call has one row
        self._wide = None  # prefill on bf16 / fp16 weights: fp32 scratch for a block of a matrix (made when needed)

    @classmethod
    def from_file(cls, path, n_streams=1, max_rows=DEFAULT_MAX_ROWS, max_seq_len=None, allow_nonfinite=False,
                  threads=None, dtype=None, quantize=None):
        """Load a llama2.c file (llmpy.formats.llama2c.read_llama2c checks it) into private memory.

        max_seq_len: the context to allocate (default: the header's seq_len, refused when its KV cache is out
        of proportion to the weights: a corrupt header); allow_nonfinite: load NaN/inf weights with a warning;
        threads, dtype, quantize: as for the constructor (dtype="bf16": the fp32 file's weights rounded to bf16;
        quantize="q8": Q8_0 on load, a matrix at a time from the file's memory map).
        """
        from llmpy.formats.llama2c import read_llama2c

        config, weights, _, _ = read_llama2c(path, max_seq_len, allow_nonfinite)
        return cls(config, weights, n_streams, max_rows, threads=threads, max_seq_len=max_seq_len, dtype=dtype,
                   quantize=quantize)

    def weight_bytes_per_token(self):
        """Bytes of weights one decode step reads: every matrix once and one embedding row."""
        def nbytes(w):
            return w.q.nbytes + w.s.nbytes if isinstance(w, QTensor) else w.nbytes
        mats = [self.wqkv, self.wo, self.w13, self.w2, self.wcls]
        norms = self.rms_att.nbytes + self.rms_ffn.nbytes + self.rms_final.nbytes
        return sum(nbytes(w) for w in mats) + norms + self.tok_emb[0].nbytes

    def kv_bytes_per_token(self, positions):
        """Bytes of keys and values one decode step reads when it attends over `positions` positions."""
        c = self.config
        return 2 * c.n_layers * positions * c.kv_dim * self.key_cache.itemsize

    def linear(self, out, inp, w):
        """out (B, OC) = inp (B, IC) @ w (OC, IC).T, with w fp32, bf16 / fp16 bits or Q8_0 (the unfused path)."""
        if isinstance(w, QTensor):
            linear_q8(out, inp, w.q, w.s, self.xq, self.xs, numba.get_num_threads())
        elif inp.shape[0] <= SMALL_BATCH:
            matmul_forward(out, inp, w)  # a few rows: one pass over the weights for all of them
        elif w.dtype == np.float32:
            np.matmul(inp, w.T, out=out)  # sgemm (prefill)
        else:  # sgemm on blocks of rows widened to fp32
            OC, IC = w.shape
            n = max(64, WIDEN_BYTES // (4 * IC))  # rows per block
            if self._wide is None or self._wide.size < n * IC:
                self._wide = np.empty(n * IC, np.float32)
            for o in range(0, OC, n):
                block = self._wide[:min(n, OC - o) * IC].reshape(-1, IC)
                widen_rows(block, w, o)
                np.matmul(inp, block.T, out=out[:, o:o + block.shape[0]])

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
        lo, hi = _bounds(positions)
        if lo < 0 or hi >= c.seq_len:
            raise LlmpyError(f"position {hi if hi >= c.seq_len else lo} is outside the context of {c.seq_len} tokens "
                             "(seq_len)")
        lo, hi = _bounds(tokens)
        if lo < 0 or hi >= c.vocab_size:
            raise LlmpyError(f"token id {hi if hi >= c.vocab_size else lo} is outside the vocabulary of {c.vocab_size}")
        lo, hi = _bounds(streams)
        if lo < 0 or hi >= self.n_streams:
            raise ValueError(f"stream {hi if hi >= self.n_streams else lo} is outside the {self.n_streams} KV caches "
                             "of this Transformer")
        if logits == "none":
            rows = np.zeros(0, np.int64)
            out = None
        elif logits == "all":
            rows = np.arange(B)
            out = np.empty((B, c.vocab_size), np.float32)
        else:
            # last row of each stream: where the next row's stream differs, or the final row
            rows = self._row0 if B == 1 else np.nonzero(np.append(streams[1:] != streams[:-1], True))[0]
            out = self.logits[:len(rows)] if len(rows) <= self.logits.shape[0] else np.empty((len(rows), c.vocab_size),
                                                                                            np.float32)
        self.governor.apply()
        if B <= SMALL_BATCH and self.fused:
            self._forward_fused(out, rows, tokens, streams, positions)
        else:
            self._forward_layers(out, rows, tokens, streams, positions)
        return out

    def _forward_fused(self, out, rows, tokens, streams, positions):
        c = self.config
        acts = (self.x, self.xb, self.xb2, self.qkv, self.att, self.atty, self.hb13, self.hb, self.xf)
        out = self.logits[:0] if out is None else out
        common = (self.key_cache, self.value_cache, self.cos, self.sin, c.n_heads, c.n_kv_heads, c.norm_eps)
        n_threads = numba.get_num_threads()
        if self.quantized:
            if self._one_region_for(n_threads, tokens.shape[0]):
                dweights = (self.tok_emb, self.rms_att, self.wqkv.q, self.wo.q, self.rms_ffn, self.w13.q, self.w2.q,
                            self.rms_final, self.wcls.q[None])
                scales = (self.wqkv.s, self.wo.s, self.w13.s, self.w2.s, self.wcls.s[None])
                if decode.forward_decode(out, rows, tokens, streams, positions, acts, self._priv, dweights, scales,
                                         (self.xq, self.xs), *common, self._sync, n_threads):
                    return
                self.one_region = False
            weights = (self.tok_emb, self.rms_att, *_pair(self.wqkv), *_pair(self.wo), self.rms_ffn, *_pair(self.w13),
                       *_pair(self.w2), self.rms_final, *_pair(self.wcls))
            forward_rows_q8(out, rows, tokens, streams, positions, acts, (self.xq, self.xs), weights, *common,
                            n_threads)
        else:
            weights = (self.tok_emb, self.rms_att, self.wqkv, self.wo, self.rms_ffn, self.w13, self.w2,
                       self.rms_final, self.wcls)
            if self._one_region_for(n_threads, tokens.shape[0]):
                dweights = weights[:-1] + (self.wcls[None],)
                if decode.forward_decode(out, rows, tokens, streams, positions, acts, self._priv, dweights, None,
                                         (self._no_xq, self._no_rows), *common, self._sync, n_threads):
                    return
                self.one_region = False
            forward_rows(out, rows, tokens, streams, positions, acts, weights, *common)

    def _one_region_for(self, n_threads, n_rows):
        """Whether these rows go through decode.forward_decode (one parallel region per token). The first time a
        barrier there gives up (threads that do not run at the same time), one_region turns False for good and
        the rows are run again through kernels.forward_rows."""
        if self.one_region is None:
            try:
                layer = numba.threading_layer()
            except ValueError:  # no parallel function has run yet: forward_rows this time
                return False
            self.one_region = layer == "omp"
        return (self.one_region and decode.usable(n_threads, self.group_size, self.config.hidden_dim, n_rows)
                and n_threads <= self._priv.shape[0])

    def _forward_layers(self, out, rows, tokens, streams, positions):
        """The forward as a Python loop over layers (prefill: BLAS sgemm for the fp32 matmuls)."""
        c = self.config
        B = tokens.shape[0]
        x, xb, xb2, qkv, atty = self.x[:B], self.xb[:B], self.xb2[:B], self.qkv[:B], self.atty[:B]
        hb13, hb = self.hb13[:B], self.hb[:B]
        for b in range(B):
            embed_row(x[b], self.tok_emb, tokens[b])  # (B, C)
        for layer in range(c.n_layers):
            # attention block: x += wo @ attention(rope(wqkv @ rmsnorm(x)))
            residual_rmsnorm(x, self._no_rows, xb, self.rms_att[layer], c.norm_eps)
            self.linear(qkv, xb, self.wqkv[layer])
            for i in range(0, B, SMALL_BATCH):  # in chunks: the scores scratch holds SMALL_BATCH rows
                j = min(B, i + SMALL_BATCH)
                attention_forward(atty[i:j], self.att[:j - i], qkv[i:j], self.key_cache[layer],
                                  self.value_cache[layer], streams[i:j], positions[i:j], self.cos, self.sin, c.n_heads,
                                  c.n_kv_heads)
            self.linear(xb2, atty, self.wo[layer])
            # ffn block: x += w2 @ (silu(w1 @ rmsnorm(x)) * (w3 @ rmsnorm(x)))
            residual_rmsnorm(x, xb2, xb, self.rms_ffn[layer], c.norm_eps)
            self.linear(hb13, xb, self.w13[layer])
            swiglu_forward(hb, hb13)
            self.linear(xb2, hb, self.w2[layer])
            x += xb2
        if out is not None:
            xf = self.xf[:len(rows)]
            xf[:] = x[rows]
            residual_rmsnorm(xf, self._no_rows, xf, self.rms_final, c.norm_eps)
            self.linear(out, xf, self.wcls)

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
