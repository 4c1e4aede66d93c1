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

    x is (B, n) fp32; the first n columns of xq (B, >= n) (int8 values, stored as int16 for matmul_q8)
    and the first n // group_size of xs (B, >= n // group_size) fp32 are written. Whole rows of C arrays
    so that the loops vectorize (this runs before every int8 matmul).
    """
    B, n = x.shape
    for b in range(B):
        xr, xqr, xsr = x[b], xq[b], xs[b]
        for g in range(n // group_size):
            lo = g * group_size
            wmax = np.float32(0.0)
            for k in range(group_size):
                wmax = max(wmax, abs(xr[lo + k]))
            scale = wmax / np.float32(Q_MAX)
            xsr[g] = scale
            inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
            for k in range(group_size):
                v = xr[lo + k] * inv
                # C's round(): half away from zero (the int conversion truncates toward zero)
                xqr[lo + k] = np.int16(v + (np.float32(0.5) if v >= 0 else np.float32(-0.5)))


CACHE_LINE = 64
PREFETCH_BYTES = 2048  # how far ahead in the weights the row dot prefetches
CHUNK = 16  # int16 lanes of one 256-bit pmaddwd: the vectorized row dot needs group_size % CHUNK == 0


def _has_avx2():
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("avx2", False))


@intrinsic
def prefetch_rows(typingctx, a, row, n_rows):
    """Software prefetch (into all cache levels) of rows row .. row + n_rows - 1 of a C-contiguous 2-D array,
    one instruction per 64-byte line. Rows past the end are harmless: a prefetch never faults."""
    sig = types.void(a, row, n_rows)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]),
                                                  "llvm.prefetch.p0")
        row_bytes = builder.mul(builder.extract_value(arr.strides, 0), ir.Constant(i64, 1))
        start = builder.bitcast(arr.data, i8.as_pointer())
        start = builder.gep(start, [builder.mul(builder.sext(args[1], i64) if args[1].type != i64 else args[1], row_bytes)])
        n_lines = builder.sdiv(builder.mul(builder.sext(args[2], i64) if args[2].type != i64 else args[2], row_bytes),
                               ir.Constant(i64, CACHE_LINE))
        with cgutils.for_range(builder, n_lines) as line:
            ptr = builder.gep(start, [builder.mul(line.index, ir.Constant(i64, CACHE_LINE))])
            builder.call(prefetch, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def _dot_q8_row(typingctx, x16, w, ws, xs, group_size):
    """sum_g (sum_k x16[g,k] * w[g,k]) * ws[g] * xs[g] for one row: int32 sums per group, fp32 across groups.

    x16 (n,) int16 and w (n,) int8 are one row each, ws and xs (G,) their group scales, n = G * group_size
    with group_size % CHUNK == 0 (a literal group_size compiles to straight-line code per group). Written in LLVM IR because numba's loops give LLVM a per-group horizontal sum of a
    128-bit vector (~35 instructions per 64 products); here each group adds 16 products at a time into
    8 int32 lanes (x86: one vpmaddwd, or vpdpwssd with VNNI), and the 8 lanes are converted, scaled and
    summed into 8 fp32 lanes, so the one horizontal sum happens per row. Without AVX2 the same lanes
    are computed with plain vector multiplies (portable, slower).
    """
    sig = types.float32(x16, w, ws, xs, group_size)

    def codegen(context, builder, signature, args):
        ax, aw, aws, axs = (context.make_array(t)(context, builder, a) for t, a in zip(signature.args[:4], args[:4]))
        i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
        v8i32, v8f, v16i8, v16i16 = ir.VectorType(i32, 8), ir.VectorType(f32, 8), ir.VectorType(i8, 16), ir.VectorType(i16, 16)
        v16i32 = ir.VectorType(i32, 16)
        G = builder.extract_value(aws.shape, 0)
        if isinstance(signature.args[4], types.IntegerLiteral):  # a constant trip count: LLVM unrolls the chunks
            nchunk = ir.Constant(i64, signature.args[4].literal_value // CHUNK)
        else:
            nchunk = builder.sdiv(builder.sext(args[4], i64) if args[4].type != i64 else args[4], ir.Constant(i64, CHUNK))
        if _has_avx2():
            pmadd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8i32, [v16i16, v16i16]),
                                                   "llvm.x86.avx2.pmadd.wd")
        def pairs_at(off):  # (8,) int32: the 16 products at off, summed in pairs
            wv = builder.load(builder.bitcast(builder.gep(aw.data, [off]), v16i8.as_pointer()), align=1)
            xv = builder.load(builder.bitcast(builder.gep(ax.data, [off]), v16i16.as_pointer()), align=2)
            if _has_avx2():  # lane j = w[2j] x[2j] + w[2j+1] x[2j+1]
                return builder.call(pmadd, [builder.sext(wv, v16i16), xv])
            prod = builder.mul(builder.sext(wv, v16i32), builder.sext(xv, v16i32))  # lane j = w[j] x[j] + w[j+8] x[j+8]
            lo = builder.shuffle_vector(prod, prod, ir.Constant(v8i32, list(range(8))))
            return builder.add(lo, builder.shuffle_vector(prod, prod, ir.Constant(v8i32, list(range(8, 16)))))

        def accumulate(acc, off):
            builder.store(builder.add(builder.load(acc), pairs_at(off)), acc)

        prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]),
                                                  "llvm.prefetch.p0")
        facc = cgutils.alloca_once_value(builder, ir.Constant(v8f, None))  # fp32 lanes, summed over groups
        iacc = [cgutils.alloca_once(builder, v8i32) for _ in range(2)]  # int32 lanes of one group: two chains
        chunk_bytes = ir.Constant(i64, CHUNK)
        with cgutils.for_range(builder, G) as group:
            g = group.index
            for acc in iacc:
                builder.store(ir.Constant(v8i32, None), acc)
            base = builder.mul(g, builder.mul(nchunk, chunk_bytes))
            # software prefetch PREFETCH_BYTES ahead (into the next rows, which this thread reads next): the
            # hardware prefetcher alone leaves this loop waiting on memory at about half the read bandwidth
            ahead = builder.gep(aw.data, [builder.add(base, ir.Constant(i64, PREFETCH_BYTES))])
            builder.call(prefetch, [ahead, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            # chunks two at a time into independent sums (the adds' latency is not one long chain), then an odd one
            with cgutils.for_range(builder, builder.sdiv(nchunk, ir.Constant(i64, 2))) as pair:
                off = builder.add(base, builder.mul(pair.index, ir.Constant(i64, 2 * CHUNK)))
                accumulate(iacc[0], off)
                accumulate(iacc[1], builder.add(off, chunk_bytes))
            odd = builder.icmp_signed("!=", builder.srem(nchunk, ir.Constant(i64, 2)), ir.Constant(i64, 0))
            with builder.if_then(odd):
                accumulate(iacc[0], builder.add(base, builder.mul(builder.sub(nchunk, ir.Constant(i64, 1)), chunk_bytes)))
            isum = builder.add(builder.load(iacc[0]), builder.load(iacc[1]))
            scale = builder.fmul(builder.load(builder.gep(aws.data, [g])), builder.load(builder.gep(axs.data, [g])))
            scale = builder.insert_element(ir.Constant(v8f, ir.Undefined), scale, ir.Constant(i32, 0))
            scale = builder.shuffle_vector(scale, ir.Constant(v8f, ir.Undefined), ir.Constant(v8i32, None))  # splat
            part = builder.fmul(builder.sitofp(isum, v8f), scale, flags=("fast",))
            builder.store(builder.fadd(builder.load(facc), part, flags=("fast",)), facc)
        acc = builder.load(facc)
        total = builder.extract_element(acc, ir.Constant(i32, 0))
        for j in range(1, 8):
            total = builder.fadd(total, builder.extract_element(acc, ir.Constant(i32, j)), flags=("fast",))
        return total

    return sig, codegen


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
    (>= B, >= G): only the first B rows and n or G columns are read; wq (d, n) int8, ws (d, G). prange over output rows i: each weight row is read from memory once and
    reused for all B rows of x while it sits in cache, so B streams cost about one stream's weight traffic.
    """
    B, d = out.shape
    for i in numba.prange(d):
        for b in range(B):
            if group_size == 64:  # llama2.c's default: a constant, so each group is straight-line code
                out[b, i] = _dot_q8_row(xq[b], wq[i], ws[i], xs[b], 64)
            elif group_size % CHUNK == 0:
                out[b, i] = _dot_q8_row(xq[b], wq[i], ws[i], xs[b], group_size)
            else:
                out[b, i] = _dot_q8_row_scalar(xq[b], wq[i], ws[i], xs[b], group_size)
