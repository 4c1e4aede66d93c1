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
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from llmpy.llama.rowdot import hsum, prefetch_l1

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

@numba.njit(cache=True, fastmath=True, inline="always")
def quantize_row(xq, xs, x, group_size):
    """runq.c's quantize of one row: x (n,) fp32 -> xq[:n] (int8 values, stored as int16 for the matmuls) and
    xs[:n // group_size] fp32 scales (xq, xs may be longer: whole rows of C arrays, so that the loops vectorize)."""
    for g in range(x.shape[0] // group_size):
        lo = g * group_size
        wmax = np.float32(0.0)
        for k in range(group_size):
            wmax = max(wmax, abs(x[lo + k]))
        scale = wmax / np.float32(Q_MAX)
        xs[g] = scale
        inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
        for k in range(group_size):
            v = x[lo + k] * inv
            # C's round(): half away from zero (the int conversion truncates toward zero)
            xq[lo + k] = np.int16(v + (np.float32(0.5) if v >= 0 else np.float32(-0.5)))


@numba.njit(cache=True, fastmath=True)
def quantize_rows(xq, xs, x, group_size):
    """Dynamic activation quantization like runq.c's quantize, row by row (quantize_row): x (B, n) fp32 into
    the first n columns of xq (B, >= n) int16 and the first n // group_size of xs (B, >= n // group_size)."""
    for b in range(x.shape[0]):
        quantize_row(xq[b], xs[b], x[b], group_size)


# how far ahead in the weights the row dot prefetches: 2048 measured 0-4% faster than 4096 (and 1024-3072 alike)
# with the VNNI dot; none at all: 8% slower
PREFETCH_BYTES = 2048
CHUNK = 16  # int16 lanes of one 256-bit pmaddwd
VNNI_BYTES = 64  # int8 weights per 512-bit vpdpbusd
# the int8 decode (kernels.linear_q8_decode: 1-3 rows, group size 64) reads the weight as this many evenly spaced
# sequential streams (rows q, q + Q, ...), as kernels.matmul_forward does: 80-85% -> 95-105% of the bandwidth probe
# on 110M's matrices (8 streams measured 0 to 8% slower with the VNNI dot)
Q8_STREAMS = 4


def _host_has(*features):
    import llvmlite.binding as llvm

    host = llvm.get_host_cpu_features()
    return all(host.get(f, False) for f in features)


def _has_avx2():
    return _host_has("avx2")


def _has_vnni():
    """AVX-512 VNNI (vpdpbusd: 64 products of unsigned by signed bytes summed into 16 int32 lanes)."""
    return _host_has("avx512f", "avx512bw", "avx512vnni")


@intrinsic(prefer_literal=True)
def dot_q8_rows(typingctx, x16, wq, ws, xs, row, step, n_rows, group_size):
    """Rows row, row + step, ..., row + (n_rows - 1) * step of w (Q8_0) dotted with x: n_rows float32, each
    sum_g (sum_k x16[g,k] * w[r,g,k]) * ws[r,g] * xs[g]: int32 sums per group, fp32 across groups.

    x16 (n,) int16, xs (G,); wq (d, n) int8 and ws (d, G) C-contiguous; n = G * group_size with
    group_size % CHUNK == 0. n_rows and group_size are literals: each group is straight-line code.
    Written in LLVM IR because numba's loops give LLVM a per-group horizontal sum of a 128-bit vector
    (~35 instructions per 64 products); here each group adds 16 products at a time into 8 int32 lanes
    (x86: one vpmaddwd, or vpdpwssd with VNNI), the 8 lanes are converted, scaled and summed into 8 fp32
    lanes, and the one horizontal sum happens per row. Each loaded chunk of x feeds n_rows rows.
    Without AVX2 the same lanes come from plain vector multiplies (portable, slower).
    """
    if not (isinstance(n_rows, types.IntegerLiteral) and isinstance(group_size, types.IntegerLiteral)):
        return None
    R, gs = n_rows.literal_value, group_size.literal_value
    sig = types.UniTuple(types.float32, R)(x16, wq, ws, xs, row, step, n_rows, group_size)

    def codegen(context, builder, signature, args):
        ax, aw, aws, axs = (context.make_array(t)(context, builder, a) for t, a in zip(signature.args[:4], args[:4]))
        i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
        v8i32, v8f, v16i8 = ir.VectorType(i32, 8), ir.VectorType(f32, 8), ir.VectorType(i8, 16)
        v16i16, v16i32 = ir.VectorType(i16, 16), ir.VectorType(i32, 16)
        def const(v):
            return ir.Constant(i64, v)

        G = builder.extract_value(aws.shape, 1)
        n = builder.extract_value(aw.shape, 1)
        row, step = (a if a.type == i64 else builder.sext(a, i64) for a in args[4:6])
        rows = [builder.add(row, builder.mul(step, const(r))) for r in range(R)]
        w_rows = [builder.gep(aw.data, [builder.mul(r, n)]) for r in rows]
        s_rows = [builder.gep(aws.data, [builder.mul(r, G)]) for r in rows]
        if _has_avx2():
            pmadd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8i32, [v16i16, v16i16]),
                                                   "llvm.x86.avx2.pmadd.wd")

        def pairs(wp, xv, off):  # (8,) int32: the 16 products at off, summed in pairs
            wv = builder.load(builder.bitcast(builder.gep(wp, [off]), v16i8.as_pointer()), align=1)
            if _has_avx2():  # lane j = w[2j] x[2j] + w[2j+1] x[2j+1]
                return builder.call(pmadd, [builder.sext(wv, v16i16), xv])
            prod = builder.mul(builder.sext(wv, v16i32), builder.sext(xv, v16i32))  # lane j: w[j] x[j] + w[j+8] x[j+8]
            lo = builder.shuffle_vector(prod, prod, ir.Constant(v8i32, list(range(8))))
            return builder.add(lo, builder.shuffle_vector(prod, prod, ir.Constant(v8i32, list(range(8, 16)))))

        if _has_vnni() and gs % VNNI_BYTES == 0:
            return _vnni_rows(builder, ax, axs, w_rows, s_rows, G, gs, context, signature)
        faccs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, None)) for _ in range(R)]  # fp32 lanes per row
        with cgutils.for_range(builder, G) as group:
            g = group.index
            base = builder.mul(g, const(gs))
            xsg = builder.load(builder.gep(axs.data, [g]))
            # software prefetch PREFETCH_BYTES ahead (into the next rows, which this thread reads next): the
            # hardware prefetcher alone leaves this loop waiting on memory at about half the read bandwidth
            for wp in w_rows:
                prefetch_l1(builder, builder.gep(wp, [builder.add(base, const(PREFETCH_BYTES))]))
            # two int32 chains per row (even and odd chunks), so the adds' latency is not one long chain
            isums = [[ir.Constant(v8i32, None)] * 2 for _ in range(R)]
            for c in range(gs // CHUNK):
                off = builder.add(base, const(c * CHUNK))
                xv = builder.load(builder.bitcast(builder.gep(ax.data, [off]), v16i16.as_pointer()), align=2)
                for r in range(R):
                    isums[r][c % 2] = builder.add(isums[r][c % 2], pairs(w_rows[r], xv, off))
            for r in range(R):
                scale = builder.fmul(builder.load(builder.gep(s_rows[r], [g])), xsg)
                scale = builder.insert_element(ir.Constant(v8f, ir.Undefined), scale, ir.Constant(i32, 0))
                scale = builder.shuffle_vector(scale, ir.Constant(v8f, ir.Undefined), ir.Constant(v8i32, None))
                part = builder.fmul(builder.sitofp(builder.add(*isums[r]), v8f), scale, flags=("fast",))
                builder.store(builder.fadd(builder.load(faccs[r]), part, flags=("fast",)), faccs[r])
        totals = [hsum(builder, builder.load(acc)) for acc in faccs]
        return context.make_tuple(builder, signature.return_type, totals)

    return sig, codegen


def _vnni_rows(builder, ax, axs, w_rows, s_rows, G, gs, context, signature):
    """dot_q8_rows' loop over groups with AVX-512 VNNI: one vpdpbusd per 64 weights of a row.

    vpdpbusd multiplies unsigned by signed bytes, so the int8 weights are read with their sign bit flipped
    (w ^ 0x80 = w + 128 as uint8, one xor) and x is truncated to int8 (its values are in [-127, 127]):
    sum (w + 128) x = sum w x + 128 sum x, and the 128 sum x lanes (one vpdpbusd of a constant 128 with x per
    chunk, shared by all rows) are subtracted again: exact int32 sums. Per group and row, the 16 int32 lanes
    are converted, scaled by ws[r, g] * xs[g] and added into 16 fp32 lanes; one horizontal sum per row.
    """
    R = len(w_rows)
    i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
    v16i32, v16f = ir.VectorType(i32, 16), ir.VectorType(f32, 16)
    v64i8, v64i16 = ir.VectorType(i8, 64), ir.VectorType(i16, 64)
    vpdpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16i32, [v16i32] * 3),
                                              "llvm.x86.avx512.vpdpbusd.512")
    zero = ir.Constant(v16i32, None)
    flip = ir.Constant(v64i8, [0x80] * VNNI_BYTES)  # the sign bit of every byte
    bias = builder.bitcast(flip, v16i32)  # bytes of 128 as the unsigned operand
    faccs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, None)) for _ in range(R)]
    with cgutils.for_range(builder, G) as group:
        g = group.index
        base = builder.mul(g, ir.Constant(i64, gs))
        xsg = builder.load(builder.gep(axs.data, [g]))
        for wp in w_rows:
            prefetch_l1(builder, builder.gep(wp, [builder.add(base, ir.Constant(i64, PREFETCH_BYTES))]))
        isums = [zero] * R
        corr = zero
        for c in range(gs // VNNI_BYTES):
            off = builder.add(base, ir.Constant(i64, c * VNNI_BYTES))
            x16 = builder.load(builder.bitcast(builder.gep(ax.data, [off]), v64i16.as_pointer()), align=2)
            xv = builder.bitcast(builder.trunc(x16, v64i8), v16i32)
            corr = builder.call(vpdpbusd, [corr, bias, xv])
            for r in range(R):
                wv = builder.load(builder.bitcast(builder.gep(w_rows[r], [off]), v64i8.as_pointer()), align=1)
                isums[r] = builder.call(vpdpbusd, [isums[r], builder.bitcast(builder.xor(wv, flip), v16i32), xv])
        for r in range(R):
            scale = builder.fmul(builder.load(builder.gep(s_rows[r], [g])), xsg)
            scale = builder.insert_element(ir.Constant(v16f, ir.Undefined), scale, ir.Constant(i32, 0))
            scale = builder.shuffle_vector(scale, ir.Constant(v16f, ir.Undefined), ir.Constant(v16i32, None))
            part = builder.fmul(builder.sitofp(builder.sub(isums[r], corr), v16f), scale, flags=("fast",))
            builder.store(builder.fadd(builder.load(faccs[r]), part, flags=("fast",)), faccs[r])
    totals = [hsum(builder, builder.load(acc)) for acc in faccs]
    return context.make_tuple(builder, signature.return_type, totals)


@numba.njit(cache=True, fastmath=True)
def _dot_q8_row_scalar(x16, w, ws, xs, group_size):
    """_dot_q8_row for any group size (one scalar int32 sum per group)."""
    val = np.float32(0.0)
    for g in range(ws.shape[0]):
        ival = np.int32(0)
        for k in range(g * group_size, (g + 1) * group_size):
            ival = np.int32(ival + np.int32(x16[k]) * np.int32(w[k]))
        val += np.float32(ival) * ws[g] * xs[g]
    return val


@numba.njit(cache=True, parallel=True, fastmath=True)
def matmul_q8(out, xq, xs, wq, ws, group_size):
    """out (B, d) = x (B, n) @ w (d, n).T with both sides Q8_0: int32 sums per group, fp32 across groups.

    xq (>= B, >= n) int16 (int8 values widened once per row, so the row dot loads them as they are), xs
    (>= B, >= G): only the first B rows and n or G columns are read; wq (d, n) int8, ws (d, G). prange
    over pairs of output rows: each weight row is read from memory once and reused for all B rows of x
    while it sits in cache, so B streams cost about one stream's weight traffic. Group sizes 16, 32, 64
    (llama2.c's export picks 64 or halves it until it divides dim) use dot_q8_rows, others a scalar loop.
    """
    B, d = out.shape
    if group_size != 64 and group_size != 32 and group_size != 16:  # the vectorized group sizes (literals)
        for i in numba.prange(d):
            for b in range(B):
                out[b, i] = _dot_q8_row_scalar(xq[b], wq[i], ws[i], xs[b], group_size)
        return
    for ip in numba.prange((d + 1) // 2):  # two weight rows at a time: each loaded chunk of x feeds both
        i = 2 * ip
        two = i + 1 < d
        for b in range(B):
            if group_size == 64:  # llama2.c's default
                if two:
                    out[b, i], out[b, i + 1] = dot_q8_rows(xq[b], wq, ws, xs[b], i, 1, 2, 64)
                else:
                    out[b, i] = dot_q8_rows(xq[b], wq, ws, xs[b], i, 1, 1, 64)[0]
            elif group_size == 32:
                if two:
                    out[b, i], out[b, i + 1] = dot_q8_rows(xq[b], wq, ws, xs[b], i, 1, 2, 32)
                else:
                    out[b, i] = dot_q8_rows(xq[b], wq, ws, xs[b], i, 1, 1, 32)[0]
            else:
                if two:
                    out[b, i], out[b, i + 1] = dot_q8_rows(xq[b], wq, ws, xs[b], i, 1, 2, 16)
                else:
                    out[b, i] = dot_q8_rows(xq[b], wq, ws, xs[b], i, 1, 1, 16)[0]
