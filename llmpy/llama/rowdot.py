"""Dot products of a few weight rows (fp32, bf16, fp16) with one or a few fp32 activation rows, in LLVM IR: the inner
loops of the decode matmuls (kernels.matmul_forward, matmul_swiglu_forward).

Decode (one token per stream) reads every weight once per token, so the matmul runs at the speed memory
delivers the weights. matmul_forward reads STREAMS rows at once (evenly spaced: long sequential streams);
dot_rows_f32 is the loop over those rows. It is IR rather than a Numba loop for one reason: a software
prefetch of each row PREFETCH_BYTES ahead, issued once per 64-byte line as the loop reaches it. The
hardware prefetcher stops at every 4 KiB page boundary and starts again only after a few misses in the
next page; the software prefetch runs across pages. A Numba loop has no prefetch, and a separate
prefetch loop per row costs more than it brings (measured: 10-25% slower).
Measured on the 2-core box (decode of 256 tokens, in-process A/B against the Numba loop): stories15M
+5%, 42M +4-15%, 110M +2-13% (run to run spread); 1024-2048 bytes ahead measured alike, 768 and 4096
worse, no prefetch 10% worse, a prefetch into L2 only (T1) 7% worse.

dot_block_f32 is the batched-decode block (4 activation rows x 4 weight rows: 16 accumulators in 512-bit
registers, no spills) and hsum the tree sum of a vector's lanes: with it the block is +10% over Numba's
4x4 loop on 8 stories15M streams (lane-by-lane sums of 16 accumulators had made it 17-24% slower).

Weights are read in their stored dtype and widened in registers, the sums staying fp32: float32; uint16 =
bfloat16 bits (the top half of an fp32: zero-extend to 32 bits and shift left by 16, vpmovzxwd + vpslld);
int16 = float16 bits (Numba has no float16 arrays; fpext, which is vcvtph2ps on x86 with F16C, else the bits
moved by hand). A bf16 or fp16 row is half the bytes of an fp32 one, so decode reads half as much. The IR is
plain LLVM vectors of 16 lanes: LLVM picks the instructions for the CPU Numba compiles for (one 512-bit register
on AVX-512, two 256-bit ones on AVX2, 128-bit ones on SSE2), so there is no variant to select at run time;
tests compile it for CPUs without AVX-512 (NUMBA_CPU_NAME=haswell: Zen 3's AVX2 and F16C; x86-64: SSE2 only) to
run the code those machines get. weight_f32 widens one stored weight the same way for the kernels' scalar loops.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

PREFETCH_BYTES = 1536  # how far ahead in each weight row the loop prefetches (into L1, like prefetcht0)
LANES = 16  # float32 lanes per vector (one 512-bit register, or two 256-bit ones)
LINE = 64  # bytes of a cache line: each loop step reads one line of every weight row (and prefetches one)
# stored weight dtype -> how the IR widens it to float32 (uint16: bfloat16 bits, int16: float16 bits)
WEIGHT_KINDS = {types.float32: "f32", types.uint16: "bf16", types.int16: "f16"}


def widen(context, builder, value, kind):
    """IR turning a stored weight value (a scalar or a vector of the stored type) into float32 lanes."""
    if kind == "f32":
        return value
    count = value.type.count if isinstance(value.type, ir.VectorType) else None

    def typ(t):
        return t if count is None else ir.VectorType(t, count)

    def const(t, v):
        return ir.Constant(typ(t), v if count is None else [v] * count)

    i32, f32 = ir.IntType(32), ir.FloatType()
    if kind == "bf16":  # the bits are the top half of the fp32
        return builder.bitcast(builder.shl(builder.zext(value, typ(i32)), const(i32, 16)), typ(f32))
    if _has_f16c(context):  # vcvtph2ps
        return builder.fpext(builder.bitcast(value, typ(ir.HalfType())), typ(f32))
    # no F16C: LLVM would call a conversion routine Numba cannot link, so the bits are moved by hand (exponent
    # rebiased from 15 to 127; inf / NaN keep an all-ones exponent; subnormals through one float subtraction)
    h = builder.zext(value, typ(i32))
    o = builder.shl(builder.and_(h, const(i32, 0x7FFF)), const(i32, 13))  # exponent and mantissa in fp32 places
    exp = builder.and_(o, const(i32, 0x7C00 << 13))
    normal = builder.add(o, const(i32, (127 - 15) << 23))
    inf_nan = builder.add(normal, const(i32, (128 - 16) << 23))
    magic = ir.Constant(typ(f32), 2.0 ** -14 if count is None else [2.0 ** -14] * count)  # the bits 113 << 23
    sub = builder.bitcast(builder.fsub(builder.bitcast(builder.add(normal, const(i32, 1 << 23)), typ(f32)), magic),
                          typ(i32))
    o = builder.select(builder.icmp_unsigned("==", exp, const(i32, 0x7C00 << 13)), inf_nan,
                       builder.select(builder.icmp_unsigned("==", exp, const(i32, 0)), sub, normal))
    sign = builder.shl(builder.and_(h, const(i32, 0x8000)), const(i32, 16))
    return builder.bitcast(builder.or_(o, sign), typ(f32))


def _has_f16c(context):
    """Whether the CPU Numba compiles for converts float16 in hardware (F16C: x86 since Ivy Bridge / Zen)."""
    try:
        return "+f16c" in context.codegen()._get_host_cpu_features()
    except AttributeError:  # another Numba codegen: the portable IR
        return False


def _load_lanes(context, builder, ptr, kind):
    """LANES weights at ptr (a pointer to the stored type) as a float32 vector."""
    vec = ir.VectorType(ptr.type.pointee, LANES)
    stored = builder.load(builder.bitcast(ptr, vec.as_pointer()), align=4 if kind == "f32" else 2)
    return widen(context, builder, stored, kind)


@intrinsic
def weight_f32(typingctx, v):
    """A stored weight as float32: float32 as is, uint16 as bfloat16 bits, int16 as float16 bits."""
    if v not in WEIGHT_KINDS:
        return None
    kind = WEIGHT_KINDS[v]

    def codegen(context, builder, signature, args):
        return widen(context, builder, args[0], kind)

    return types.float32(v), codegen


def hsum(builder, vec):
    """The sum of a float vector's lanes as a tree: halves added until one lane is left (log2(lanes) shuffles
    and adds, where lane-by-lane extraction costs a shuffle per lane)."""
    i32 = ir.IntType(32)
    width = vec.type.count
    while width > 1:
        width //= 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, width), list(range(width))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, width), list(range(width, 2 * width))))
        vec = builder.fadd(lo, hi, flags=("fast",))
    return builder.extract_element(vec, ir.Constant(i32, 0))


def prefetch_l1(builder, ptr):
    """IR for a software prefetch of the line at ptr for reading into the L1 cache (prefetcht0); never faults."""
    i8, i32 = ir.IntType(8), ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0")
    # read (0), locality 3 (keep in all cache levels: prefetcht0), data cache (1)
    builder.call(fn, [builder.bitcast(ptr, i8.as_pointer()), ir.Constant(i32, 0), ir.Constant(i32, 3),
                      ir.Constant(i32, 1)])


def _dot_block(context, builder, x_rows, w_rows, n, kind):
    """IR for the dot products of every row pointer in x_rows (float32) with every one in w_rows (n weights each,
    stored as `kind`): a list of float32 values in the order i * len(w_rows) + j. One accumulator vector per pair;
    each chunk of a w row is loaded once for all x rows and each chunk of an x row once for all w rows. A loop step
    reads one cache line of every w row (LANES fp32 weights, 2 LANES bf16 or fp16 ones) and prefetches the line
    PREFETCH_BYTES ahead."""
    i64, f32 = ir.IntType(64), ir.FloatType()
    vf = ir.VectorType(f32, LANES)
    itemsize = 4 if kind == "f32" else 2
    step = LINE // itemsize  # weights per loop step
    ahead = ir.Constant(i64, PREFETCH_BYTES // itemsize)
    pairs = [(xp, wp) for xp in x_rows for wp in w_rows]
    accs = [cgutils.alloca_once_value(builder, ir.Constant(vf, None)) for _ in pairs]
    n_steps = builder.udiv(n, ir.Constant(i64, step))
    with cgutils.for_range(builder, n_steps) as loop:
        start = builder.mul(loop.index, ir.Constant(i64, step))
        for wp in w_rows:
            prefetch_l1(builder, builder.gep(wp, [builder.add(start, ahead)]))
        for k in range(step // LANES):
            off = builder.add(start, ir.Constant(i64, k * LANES))
            xv = {xp: builder.load(builder.bitcast(builder.gep(xp, [off]), vf.as_pointer()), align=4) for xp in x_rows}
            wv = {wp: _load_lanes(context, builder, builder.gep(wp, [off]), kind) for wp in w_rows}
            for (xp, wp), acc in zip(pairs, accs):
                prod = builder.fmul(wv[wp], xv[xp], flags=("fast",))
                builder.store(builder.fadd(builder.load(acc), prod, flags=("fast",)), acc)
    totals = [cgutils.alloca_once_value(builder, hsum(builder, builder.load(acc))) for acc in accs]
    tail = builder.mul(n_steps, ir.Constant(i64, step))
    with cgutils.for_range_slice(builder, tail, n, ir.Constant(i64, 1), inc=True) as (col, _):
        for (xp, wp), total in zip(pairs, totals):
            w = widen(context, builder, builder.load(builder.gep(wp, [col])), kind)
            prod = builder.fmul(w, builder.load(builder.gep(xp, [col])), flags=("fast",))
            builder.store(builder.fadd(builder.load(total), prod, flags=("fast",)), total)
    return [builder.load(t) for t in totals]


def _row_pointers(builder, data, first, step, count, n):
    i64 = ir.IntType(64)
    first, step = (a if a.type == i64 else builder.sext(a, i64) for a in (first, step))
    return [builder.gep(data, [builder.mul(builder.add(first, builder.mul(step, ir.Constant(i64, r))), n)])
            for r in range(count)]


@intrinsic(prefer_literal=True)
def dot_rows_f32(typingctx, x, w, row, step, n_rows):
    """(x . w[row], x . w[row + step], ..., x . w[row + (n_rows - 1) step]) as a tuple of n_rows float32.

    x (n,) float32 and w (d, n) C-contiguous, float32 or bf16 / fp16 bits (WEIGHT_KINDS); n_rows a literal. One
    accumulator vector per row, each chunk of x loaded once for all rows, each weight row prefetched PREFETCH_BYTES
    ahead, then one horizontal sum per row and a scalar loop over the last columns (n % 16 fp32, n % 32 bf16).
    """
    if not isinstance(n_rows, types.IntegerLiteral) or w.dtype not in WEIGHT_KINDS:
        return None
    kind = WEIGHT_KINDS[w.dtype]
    R = n_rows.literal_value
    sig = types.UniTuple(types.float32, R)(x, w, row, step, n_rows)

    def codegen(context, builder, signature, args):
        ax = context.make_array(signature.args[0])(context, builder, args[0])
        aw = context.make_array(signature.args[1])(context, builder, args[1])
        n = builder.extract_value(aw.shape, 1)
        w_rows = _row_pointers(builder, aw.data, args[2], args[3], R, n)
        sums = _dot_block(context, builder, [ax.data], w_rows, n, kind)
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


@intrinsic(prefer_literal=True)
def dot_block_f32(typingctx, x, b, n_x, w, row, step, n_w):
    """x[b + i] . w[row + j step] for i < n_x, j < n_w: a tuple of n_x * n_w float32 in the order i * n_w + j.

    x (B, n) float32 and w (d, n) C-contiguous, float32 or bf16 / fp16 bits; n_x and n_w literals. The block for
    batched decode: 4 x 4 sums take 16 accumulator registers (512-bit vectors: 32 registers on AVX-512), 4 loads
    of x and 4 of w per 16 multiply-adds.
    """
    if not (isinstance(n_x, types.IntegerLiteral) and isinstance(n_w, types.IntegerLiteral)) or \
            w.dtype not in WEIGHT_KINDS:
        return None
    kind = WEIGHT_KINDS[w.dtype]
    RX, RW = n_x.literal_value, n_w.literal_value
    sig = types.UniTuple(types.float32, RX * RW)(x, b, n_x, w, row, step, n_w)

    def codegen(context, builder, signature, args):
        ax = context.make_array(signature.args[0])(context, builder, args[0])
        aw = context.make_array(signature.args[3])(context, builder, args[3])
        n = builder.extract_value(aw.shape, 1)
        x_rows = _row_pointers(builder, ax.data, args[1], ir.Constant(ir.IntType(64), 1), RX, n)
        w_rows = _row_pointers(builder, aw.data, args[4], args[5], RW, n)
        sums = _dot_block(context, builder, x_rows, w_rows, n, kind)
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen
