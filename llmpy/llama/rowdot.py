"""A few fp32 weight rows dotted with one activation row, written in LLVM IR: the decode matmul's inner loop.

Decode (one token per stream) reads every weight once per token, so the matmul runs at the speed memory
delivers the weights. kernels.matmul_forward reads STREAMS rows at once (evenly spaced: long sequential
streams); this is the loop over those rows. It is IR rather than a Numba loop for one reason: a software
prefetch of each row PREFETCH_BYTES ahead, issued once per 64-byte line as the loop reaches it. The
hardware prefetcher stops at every 4 KiB page boundary and starts again only after a few misses in the
next page; the software prefetch runs across pages. A Numba loop has no prefetch, and a separate
prefetch loop per row costs more than it brings (measured: 10-25% slower).

Measured on the 2-core box (decode of 256 tokens, in-process A/B against the Numba loop): stories15M
+5%, 42M +4-15%, 110M +2-13% (run to run spread); 1024-2048 bytes ahead measured alike, 768 and 4096
worse, no prefetch 10% worse, a prefetch into L2 only (T1) 7% worse.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

PREFETCH_BYTES = 1536  # how far ahead in each weight row the loop prefetches (into L1, like prefetcht0)
LANES = 16  # float32 lanes per vector (one 512-bit register, or two 256-bit ones)


@intrinsic(prefer_literal=True)
def dot_rows_f32(typingctx, x, w, row, step, n_rows):
    """(x . w[row], x . w[row + step], ..., x . w[row + (n_rows - 1) step]) as a tuple of n_rows float32.

    x (n,) and w (d, n) C-contiguous float32; n_rows a literal. One accumulator vector per row, each chunk
    of x loaded once for all rows, then one horizontal sum per row and a scalar loop over the n % LANES
    last columns.
    """
    if not isinstance(n_rows, types.IntegerLiteral):
        return None
    R = n_rows.literal_value
    sig = types.UniTuple(types.float32, R)(x, w, row, step, n_rows)

    def codegen(context, builder, signature, args):
        ax = context.make_array(signature.args[0])(context, builder, args[0])
        aw = context.make_array(signature.args[1])(context, builder, args[1])
        i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
        vf = ir.VectorType(f32, LANES)
        n = builder.extract_value(aw.shape, 1)
        row_, step_ = (a if a.type == i64 else builder.sext(a, i64) for a in args[2:4])
        w_rows = [builder.gep(aw.data, [builder.mul(builder.add(row_, builder.mul(step_, ir.Constant(i64, r))), n)])
                  for r in range(R)]
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0")
        ahead = ir.Constant(i64, PREFETCH_BYTES // 4)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vf, None)) for _ in range(R)]
        n_vec = builder.udiv(n, ir.Constant(i64, LANES))
        with cgutils.for_range(builder, n_vec) as loop:
            off = builder.mul(loop.index, ir.Constant(i64, LANES))
            xv = builder.load(builder.bitcast(builder.gep(ax.data, [off]), vf.as_pointer()), align=4)
            for wp in w_rows:  # read, no temporal hint, data cache (locality 3: prefetcht0)
                builder.call(prefetch, [builder.bitcast(builder.gep(wp, [builder.add(off, ahead)]), i8.as_pointer()),
                                        ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            for wp, acc in zip(w_rows, accs):
                wv = builder.load(builder.bitcast(builder.gep(wp, [off]), vf.as_pointer()), align=4)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(wv, xv, flags=("fast",)), flags=("fast",)),
                              acc)
        totals = []
        for acc in accs:
            vec = builder.load(acc)
            total = builder.extract_element(vec, ir.Constant(i32, 0))
            for j in range(1, LANES):
                total = builder.fadd(total, builder.extract_element(vec, ir.Constant(i32, j)), flags=("fast",))
            totals.append(cgutils.alloca_once_value(builder, total))
        tail = builder.mul(n_vec, ir.Constant(i64, LANES))
        with cgutils.for_range_slice(builder, tail, n, ir.Constant(i64, 1), inc=True) as (col, _):
            xs = builder.load(builder.gep(ax.data, [col]))
            for wp, total in zip(w_rows, totals):
                prod = builder.fmul(builder.load(builder.gep(wp, [col])), xs, flags=("fast",))
                builder.store(builder.fadd(builder.load(total), prod, flags=("fast",)), total)
        return context.make_tuple(builder, signature.return_type, [builder.load(t) for t in totals])

    return sig, codegen
