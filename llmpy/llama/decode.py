"""Decode (1-3 rows, one token each) as one parallel region per token: the threads meet at barriers between the
steps of a layer instead of starting and joining a parallel region for each step.

kernels.forward_rows starts ~5 parallel regions per layer (31 per stories15M token, 61 per int8 110M token) and
runs the small steps between them (rmsnorm, RoPE, residual adds) on one thread. Here each of the n threads runs
the whole forward: it keeps its own copy of the residual stream x and of the normed rows (so rmsnorm and the
residual adds need no barrier), computes its share of each matmul's rows, of the RoPE heads and of the attention
heads, and waits at a barrier wherever the next step reads what all threads wrote (6 per layer). Measured on the
2-core box (decode of 256 tokens, the same Transformer with one_region off and on, 8-12 rounds in alternating
order, median of the per-round ratios, three such runs): stories15M -1 to +5%, 42M +1 to +3%, 110M +1%, int8 110M
+6.5 to +8%.

The barrier spins on a shared counter; it only works when the n iterations of the parallel loop run at the same
time, one per thread, which numba's OpenMP layer does (a static schedule of n iterations over n threads). Other
threading layers (TBB) give no such promise, so the caller uses this path under OpenMP only. Should a thread
still wait longer than SPIN_LIMIT cycles (its partner never came), every barrier of the call gives up, the call
returns False, and the caller runs the token again through kernels.forward_rows: a forward only writes its
rows' activations and their KV cache rows at their positions, so running it again gives the same result.
"""

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from llmpy.llama.kernels import (
    DECODE_GROUP,
    Q8_STREAMS,
    STREAMS,
    attend_head,
    embed_row,
    matmul_decode_step,
    matmul_tail_rows,
    q8_decode_part,
    q8_decode_tail,
    residual_rmsnorm,
    rope_store_heads,
    swiglu_decode_step,
)

SPIN_LIMIT = 1 << 31  # time-stamp counter ticks (~0.7 s at 3 GHz) a thread waits at a barrier before giving up
# sync array: arrivals at [0], the barrier's generation at [ARRIVE_STRIDE], the give-up flag at [2 * ARRIVE_STRIDE]
# (separate 64-byte lines)
ARRIVE_STRIDE = 8
SYNC_SIZE = 3 * ARRIVE_STRIDE


@intrinsic
def barrier(typingctx, sync, n):
    """Wait until n threads have called barrier(sync, n) (a sense-reversing counter barrier); False if this
    thread gave up (after SPIN_LIMIT ticks, or at once when another thread has) instead."""
    sig = types.boolean(sync, n)

    def codegen(context, builder, signature, args):
        i64, i1 = ir.IntType(64), ir.IntType(1)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        count, gen_p, fail_p = (builder.gep(arr.data, [ir.Constant(i64, k * ARRIVE_STRIDE)]) for k in range(3))
        n = args[1] if args[1].type == i64 else builder.sext(args[1], i64)
        pause = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(ir.VoidType(), []))
        clock = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=ir.FunctionType(i64, []))
        zero, one = ir.Constant(i64, 0), ir.Constant(i64, 1)
        ok = cgutils.alloca_once(builder, i1)
        blocks = {name: builder.append_basic_block(name) for name in
                  ("arrive", "release", "wait", "spin", "check", "give_up", "fail", "pass", "end")}
        # a thread that finds the give-up flag set leaves at once
        failed = builder.icmp_signed("!=", builder.load_atomic(fail_p, "acquire", 8), zero)
        builder.cbranch(failed, blocks["fail"], blocks["arrive"])
        builder.position_at_end(blocks["arrive"])
        gen = builder.load_atomic(gen_p, "acquire", 8)
        arrived = builder.atomic_rmw("add", count, one, "acq_rel")
        builder.cbranch(builder.icmp_signed("==", arrived, builder.sub(n, one)), blocks["release"], blocks["wait"])
        builder.position_at_end(blocks["release"])  # the last to arrive resets the count and lets the others go
        builder.store_atomic(zero, count, "monotonic", 8)
        builder.atomic_rmw("add", gen_p, one, "release")
        builder.branch(blocks["pass"])
        builder.position_at_end(blocks["wait"])
        start = builder.call(clock, [])
        builder.branch(blocks["spin"])
        builder.position_at_end(blocks["spin"])  # until the generation moves on
        builder.call(pause, [])
        moved = builder.icmp_signed("!=", builder.load_atomic(gen_p, "acquire", 8), gen)
        builder.cbranch(moved, blocks["pass"], blocks["check"])
        builder.position_at_end(blocks["check"])  # or too long, or another thread gave up
        too_long = builder.icmp_unsigned(">", builder.sub(builder.call(clock, []), start), ir.Constant(i64, SPIN_LIMIT))
        other = builder.icmp_signed("!=", builder.load_atomic(fail_p, "acquire", 8), zero)
        builder.cbranch(builder.or_(too_long, other), blocks["give_up"], blocks["spin"])
        builder.position_at_end(blocks["give_up"])
        builder.store_atomic(one, fail_p, "release", 8)
        builder.branch(blocks["fail"])
        builder.position_at_end(blocks["fail"])
        builder.store(ir.Constant(i1, 0), ok)
        builder.branch(blocks["end"])
        builder.position_at_end(blocks["pass"])
        builder.store(ir.Constant(i1, 1), ok)
        builder.branch(blocks["end"])
        builder.position_at_end(blocks["end"])
        return builder.load(ok)

    return sig, codegen


@numba.njit(cache=True, fastmath=True)
def _attention_share(out, att, qkv, key_cache, value_cache, streams, positions, cos, sin, n_heads, n_kv_heads,
                     sync, tid, nt):
    """A thread's share of attention_forward: RoPE and cache stores of its heads, a barrier (every head's key and
    value rows are stored), attention of its (row, head) pairs. False if the barrier gave up."""
    QD = out.shape[1]  # out is (B, QD): the heads side by side
    hs = QD // n_heads
    B = qkv.shape[0]
    rope_store_heads(qkv, key_cache, value_cache, streams, positions, cos, sin, QD, n_kv_heads * hs,
                     tid * n_heads // nt, (tid + 1) * n_heads // nt, tid * n_kv_heads // nt,
                     (tid + 1) * n_kv_heads // nt)
    if not barrier(sync, nt):
        return False
    for bh in range(tid * B * n_heads // nt, (tid + 1) * B * n_heads // nt):
        attend_head(out, att, qkv, key_cache, value_cache, streams, positions, n_heads, n_kv_heads, bh // n_heads,
                    bh % n_heads)
    return True


@numba.njit(cache=True, fastmath=True)
def _matmul_share(out, inp, weight, tid, nt):
    """A thread's share of matmul_forward's decode loop (steps tid Q / nt ..), the last thread also the tail rows."""
    Q = weight.shape[0] // STREAMS
    for q in range(tid * Q // nt, (tid + 1) * Q // nt):
        matmul_decode_step(out, inp, weight, q, Q)
    if tid == nt - 1:
        matmul_tail_rows(out, inp, weight, STREAMS * Q)


@numba.njit(cache=True, fastmath=True)
def _swiglu_share(out, inp, w13, tid, nt):
    Q = out.shape[1] // 4
    for q in range(tid * Q // nt, (tid + 1) * Q // nt):
        swiglu_decode_step(out, inp, w13, q, Q)


@numba.njit(cache=True, fastmath=True)
def _q8_share(out, inp, wq, ws, xqt, xst, swiglu, tid, nt):
    """A thread's share of linear_q8_decode (quantizing the input into its own scratch xqt, xst first); the last
    thread also the tail rows."""
    Q = wq.shape[0] // Q8_STREAMS
    q8_decode_part(out, inp, wq, ws, xqt, xst, swiglu, tid * Q // nt, (tid + 1) * Q // nt)
    if tid == nt - 1:
        q8_decode_tail(out, wq, ws, xqt, xst)


def _linear_share(out, inp, w, s, xqt, xst, swiglu, tid, nt):
    """A thread's share of out = inp @ w.T (with swiglu: SwiGLU of w = [w1; w3]): fp32 when the scales s are None,
    else Q8_0 (w int8 values, s scales; the thread quantizes inp into xqt, xst first). Numba code only (the
    overload below picks the kernel by the type of s)."""
    raise NotImplementedError("decode._linear_share runs inside numba kernels only")


@overload(_linear_share)
def _linear_share_overload(out, inp, w, s, xqt, xst, swiglu, tid, nt):
    if isinstance(s, types.NoneType):
        def fp32(out, inp, w, s, xqt, xst, swiglu, tid, nt):
            if swiglu:
                _swiglu_share(out, inp, w, tid, nt)
            else:
                _matmul_share(out, inp, w, tid, nt)
        return fp32

    def int8(out, inp, w, s, xqt, xst, swiglu, tid, nt):
        _q8_share(out, inp, w, s, xqt, xst, swiglu, tid, nt)
    return int8


@numba.njit(cache=True, parallel=True, fastmath=True)
def forward_decode(logits, rows, tokens, streams, positions, acts, priv, weights, scales, qacts, key_cache,
                   value_cache, cos, sin, n_heads, n_kv_heads, eps, sync, nt):
    """kernels.forward_rows (fp32, bf16 or fp16 weights) or forward_rows_q8 (int8, group size DECODE_GROUP) for
    B < 4 rows, H % 4 == 0, in one parallel region of nt threads; False if a barrier gave up (nothing to use: run
    the rows through forward_rows).

    weights = (tok_emb, rms_att, wqkv, wo, rms_ffn, w13, w2, rms_final, wcls), the matrices stacked over layers and
    wcls as (1, V, C); scales = None (fp32) or the scales of wqkv, wo, w13, w2, wcls stacked alike; qacts = (xq, xs)
    with >= nt * B rows (int8: thread t quantizes into rows t B .. t B + B - 1). priv (>= nt, 2, >= B, C) is each
    thread's copy of x and of the normed rows; acts as in forward_rows (att, atty, xb2, qkv, hb shared: each thread
    writes its share of them; xb is unused, the normed rows being each thread's own).
    """
    _, _, xb2, qkv, att, atty, _, hb, _ = acts
    xq, xs = qacts
    tok_emb, rms_att, wqkv, wo, rms_ffn, w13, w2, rms_final, wcls = weights
    B, R = tokens.shape[0], rows.shape[0]
    xb2, qkv, att, atty, hb = xb2[:B], qkv[:B], att[:B], atty[:B], hb[:B]
    sync[0] = sync[2 * ARRIVE_STRIDE] = 0
    for tid in numba.prange(nt):  # one iteration per thread
        xt, xn = priv[tid, 0, :B], priv[tid, 1, :B]  # this thread's residual stream and normed rows
        xqt, xst = xq[tid * B:(tid + 1) * B], xs[tid * B:(tid + 1) * B]
        for b in range(B):
            embed_row(xt[b], tok_emb, tokens[b])
        for layer in range(wqkv.shape[0]):
            residual_rmsnorm(xt, xt[:0], xn, rms_att[layer], eps)
            _linear_share(qkv, xn, wqkv[layer], _layer(scales, 0, layer), xqt, xst, False, tid, nt)
            if not barrier(sync, nt):
                break
            if not _attention_share(atty, att, qkv, key_cache[layer], value_cache[layer], streams, positions, cos, sin,
                                    n_heads, n_kv_heads, sync, tid, nt):
                break
            if not barrier(sync, nt):
                break
            _linear_share(xb2, atty, wo[layer], _layer(scales, 1, layer), xqt, xst, False, tid, nt)
            if not barrier(sync, nt):
                break
            residual_rmsnorm(xt, xb2, xn, rms_ffn[layer], eps)
            _linear_share(hb, xn, w13[layer], _layer(scales, 2, layer), xqt, xst, True, tid, nt)
            if not barrier(sync, nt):
                break
            _linear_share(xb2, hb, w2[layer], _layer(scales, 3, layer), xqt, xst, False, tid, nt)
            if not barrier(sync, nt):
                break
            xt += xb2
        if R > 0 and sync[2 * ARRIVE_STRIDE] == 0:
            for r in range(R):
                xn[r] = xt[rows[r]]
            residual_rmsnorm(xn[:R], xt[:0], xn[:R], rms_final, eps)
            _linear_share(logits[:R], xn[:R], wcls[0], _layer(scales, 4, 0), xqt, xst, False, tid, nt)
    return sync[2 * ARRIVE_STRIDE] == 0


def _layer(scales, k, layer):
    """scales[k][layer]: layer's scales of the k-th matrix; None when scales is None (fp32 weights)."""
    return None if scales is None else scales[k][layer]


@overload(_layer)
def _layer_overload(scales, k, layer):
    if isinstance(scales, types.NoneType):
        return lambda scales, k, layer: None
    return lambda scales, k, layer: scales[k][layer]


def usable(n_threads, group_size, hidden_dim, n_rows):
    """Whether forward_decode may run these rows (numba's threading layer being OpenMP): 2+ threads, B < 4,
    H % 4 == 0, and for int8 the decode group size."""
    return n_threads >= 2 and n_rows < 4 and hidden_dim % 4 == 0 and group_size in (None, DECODE_GROUP)

