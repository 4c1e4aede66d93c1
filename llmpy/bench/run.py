"""`llmpy bench run`: Llama 2 decode tok/s against the memory-bandwidth limit, measured in the same run.

For random-weight models with the shapes of llama2.c's stories15M / 42M / 110M (and, chosen with --models,
SmolLM2-135M and TinyLlama-1.1B: GQA, long context, 0.5 and 4.4 GB of fp32 weights): greedy decode of
--tokens tokens after a BOS, one token per forward (run.c's loop). The limit is the sustained read
bandwidth of this machine (2 threads summing a 512 MiB array as 8 sequential streams, as the decode
matmuls read, BW_PASSES times in a row; one such run right before each decode run, and the best of
each, so that both sides are measured alike on this shared machine) divided by the bytes one token
reads: every weight once, plus the keys and values of the KV cache at the average position of the run
(token p attends over p + 1 positions). Every shape also in bf16 (the weights rounded to bfloat16 and read as
such: half the bytes), int8 (Q8_0) on 110M, SmolLM2-135M and TinyLlama-1.1B, each against its own limit (bytes
actually read) and against fp32, and --batch
streams against one stream on the 15M shape: the variants of a model take turns in every round, so that
a ratio compares runs from the same minutes of this shared machine (printed as best / best and as the
median of the per-round ratios).

llama.cpp, when llama-cpp-python is installed (--no-llamacpp skips it): each shape's weights are written as GGUF
(F32, BF16, Q8_0: bench/llamacpp.py, one file at a time in a temporary directory) and llama.cpp's greedy decode on
them takes turns with ours in the same rounds, after a check that its logits match ours; printed as llm.py tok/s /
llama.cpp tok/s for fp32 vs F32, bf16 vs BF16, int8 (Q8_0, groups of 64) vs Q8_0 (blocks of 32). Goal: >= 1.0x.

--contended: what a busy laptop does to decode. The default (threads picked by llmpy/threads.py from the
cores other processes leave free) against one fixed thread, in alternating rounds, first on the idle
machine, then with one CPU-burning process per core that the bench starts itself (bench/contend.py).
Target: under contention the default at >= 1.0x one thread, idle unchanged.
"""

import time

SHAPES = {  # name: (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)
    "15M": (288, 768, 6, 6, 6, 32000, 256),
    "42M": (512, 1376, 8, 8, 8, 32000, 1024),
    "110M": (768, 2048, 12, 12, 12, 32000, 1024),
    "SmolLM2-135M": (576, 1536, 30, 9, 3, 49152, 2048),  # head size 64, GQA 3:1
    "TinyLlama-1.1B": (2048, 5632, 22, 32, 4, 32000, 2048),  # head size 64, GQA 8:1
}
UNTIED = {"TinyLlama-1.1B"}  # its own classifier matrix (the others share the embedding table)
INT8 = {"110M", "SmolLM2-135M", "TinyLlama-1.1B"}  # shapes also measured in int8 (Q8_0, group size 64)
BW_BYTES = 512 * 1024 * 1024  # bandwidth probe size, well beyond the last-level cache
BW_PASSES = 16  # passes over the probe array per timed run (~0.3 s: a sustained rate, not one lucky pass)
BW_STREAMS = 8  # sequential streams the probe reads at once (kernels.STREAMS, as the decode matmuls read)


def add_arguments(parser):
    parser.add_argument("--models", default="15M,42M,110M",
                        help="comma-separated shapes among " + ",".join(SHAPES) + " (TinyLlama-1.1B: ~8 GB of memory)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens generated per measurement")
    parser.add_argument("--batch", type=int, default=8, help="streams for the batched measurement (15M)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="best of this many timed runs (each after a bandwidth probe run, also best of)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 measurements")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 measurements")
    parser.add_argument("--no-llamacpp", action="store_true",
                        help="skip timing llama.cpp on the same weights (done when llama-cpp-python is installed)")
    parser.add_argument("--contended", action="store_true",
                        help="instead: the default threads against one thread, idle and with a CPU-burning process "
                             "per core (started by the bench), in the same run")


def _make_probe():
    """A function that returns the sustained bytes/s of 2 threads reading a large array (one run of BW_PASSES
    passes over BW_BYTES).

    A pass reads the array as BW_STREAMS evenly spaced sequential streams at once (prange step r sums rows
    r, r + Q, ..., r + 7Q), which is how the decode matmuls read a weight matrix, and the fastest of the
    read patterns measured on the 2-core box: 4 consecutive rows at a time read ~4% less, one row at a time
    up to ~15% less, either of which would flatter the ratios. A run is many passes (~0.3 s) so that the
    limit is a rate the machine sustains, not one lucky pass.
    """
    import numba
    import numpy as np

    @numba.njit(parallel=True, fastmath=True, cache=False)
    def row_sums(out, a, passes):
        # a is (R, N) with R % BW_STREAMS == 0, out is (R,)
        Q = a.shape[0] // BW_STREAMS
        for _ in range(passes):
            for r in numba.prange(Q):
                a0, a1, a2, a3 = a[r], a[r + Q], a[r + 2 * Q], a[r + 3 * Q]
                a4, a5, a6, a7 = a[r + 4 * Q], a[r + 5 * Q], a[r + 6 * Q], a[r + 7 * Q]
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
                for j in range(a.shape[1]):
                    s0 += a0[j]
                    s1 += a1[j]
                    s2 += a2[j]
                    s3 += a3[j]
                    s4 += a4[j]
                    s5 += a5[j]
                    s6 += a6[j]
                    s7 += a7[j]
                out[r], out[r + Q], out[r + 2 * Q], out[r + 3 * Q] = s0, s1, s2, s3
                out[r + 4 * Q], out[r + 5 * Q], out[r + 6 * Q], out[r + 7 * Q] = s4, s5, s6, s7

    a = np.ones((BW_BYTES // 4096, 1024), np.float32)
    out = np.zeros(a.shape[0], np.float32)
    row_sums(out, a, 1)

    def probe():
        t = time.perf_counter()
        row_sums(out, a, BW_PASSES)
        return BW_PASSES * a.nbytes / (time.perf_counter() - t)

    return probe


def _decode_rates(variants, tokens, repeats, probe):
    """[(best tok/s, best probe bytes/s, per-round tok/s, per-round probe bytes/s)] for each (transformer,
    n_streams) in variants: greedy decode from BOS for `tokens` steps per stream (all streams in lock step). The
    variants take turns within each of the `repeats` rounds, each run right after a bandwidth probe run, so that
    limits, rates and the ratios between variants (int8 / fp32, 8 streams / 1) come from the same stretches of
    this shared machine.
    """
    import numpy as np

    best = [0.0] * len(variants)
    rounds = [[] for _ in variants]
    probes = [[] for _ in variants]
    for _ in range(repeats):
        for i, (transformer, n_streams) in enumerate(variants):
            probes[i].append(probe())
            streams = np.arange(n_streams)
            tok = np.ones(n_streams, np.int64)
            t = time.perf_counter()
            for pos in range(tokens):
                logits = transformer.forward(tok, np.full(n_streams, pos), streams)
                tok = logits.argmax(-1)
            rate = n_streams * tokens / (time.perf_counter() - t)
            rounds[i].append(rate)
            best[i] = max(best[i], rate)
    return [(b, max(p), r, p) for b, r, p in zip(best, rounds, probes)]


def _limit_note(nbytes, rounds, probes):
    """'median of rounds N%': each round's tok/s against the limit from the probe run right before it."""
    import numpy as np

    return f"median of rounds {np.median(np.array(rounds) * nbytes / np.array(probes)):.0%}"


def _ratio_note(what, rate, base, rounds, base_rounds):
    """'what = best/best (median of the per-round ratios)'."""
    import numpy as np

    per_round = np.median(np.array(rounds) / np.array(base_rounds))
    return f"{what} = {rate / base:.2f}x (median of rounds {per_round:.2f}x)"


def _random_packed(config, rng, tied):
    """Random fp32 weights already stacked as the Transformer keeps them (weights["packed"]): the fp32 Transformer
    uses them without a copy (TinyLlama's shape: 4.4 GB once, not twice)."""
    import numpy as np

    c = config

    def mat(*shape):  # ~N(0, 0.02^2) as model.random_weights, made in place
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(0.02)
        return w

    def norm(*shape):
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(0.1)
        w += np.float32(1.0)
        return w

    L, C, H, KV, V = c.n_layers, c.dim, c.hidden_dim, c.kv_dim, c.vocab_size
    weights = {"tok_emb": mat(V, C), "rms_att": norm(L, C), "rms_ffn": norm(L, C), "rms_final": norm(C),
               "packed": {"wqkv": mat(L, C + 2 * KV, C), "wo": mat(L, C, C), "w13": mat(L, 2 * H, C),
                          "w2": mat(L, C, H)}}
    weights["wcls"] = weights["tok_emb"] if tied else mat(V, C)
    return weights


def _model_weights(name, rng, int8, bf16=False):
    """[(kind, config, weights, Transformer options)] for a shape: fp32 random weights, and the same weights
    converted by the Transformer on load: rounded to bf16 (dtype="bf16") when bf16, Q8_0 (quantize="q8", group
    size 64 on every shape here) when int8."""
    from llmpy.llama.model import LlamaConfig

    config = LlamaConfig(*SHAPES[name], shared_classifier=name not in UNTIED)
    weights = _random_packed(config, rng, name not in UNTIED)
    out = [("fp32", config, weights, {})]
    if bf16:
        out.append(("bf16", config, weights, {"dtype": "bf16"}))
    if int8:
        out.append(("int8", config, weights, {"quantize": "q8"}))
    return out


def _contended(args, names):
    """Default threads vs one thread, idle and under burners: one row per model variant."""
    import contextlib

    import numpy as np

    from llmpy.bench.contend import busy_cpus
    from llmpy.llama.inference import Transformer

    rows = []
    rng = np.random.default_rng(0)
    for name in names:
        for kind, config, weights, options in _model_weights(name, rng, name in INT8 and not args.no_int8,
                                                             not args.no_bf16):
            row = [name, kind]
            for busy in (False, True):
                with busy_cpus() if busy else contextlib.nullcontext():
                    # made here: the governor looks at the machine from now on
                    pair = [Transformer(config, weights, **options),
                            Transformer(config, weights, threads=1, **options)]
                    rates = _decode_rates([(t, 1) for t in pair], args.tokens, args.repeats, lambda: 1.0)
                    chosen = pair[0].governor.current
                row += [rates[0][0], rates[1][0], np.median(np.array(rates[0][2]) / np.array(rates[1][2])), chosen]
            rows.append(row)
    print(f"greedy decode of {args.tokens} tokens from BOS, best of {args.repeats} runs, the default threads and one "
          "thread taking turns; busy = one CPU-burning process per core")
    print(f"{'model':>14} {'kind':>5} | {'idle: default':>13} {'1 thread':>9} {'ratio':>6} {'thr':>3} | "
          f"{'busy: default':>13} {'1 thread':>9} {'ratio':>6} {'thr':>3}   (tok/s; ratio = median of rounds)")
    for name, kind, d0, o0, r0, t0, d1, o1, r1, t1 in rows:
        print(f"{name:>14} {kind:>5} | {d0:13.1f} {o0:9.1f} {r0:5.2f}x {t0:3d} | "
              f"{d1:13.1f} {o1:9.1f} {r1:5.2f}x {t1:3d}")
    return 0


def run(args):
    import numpy as np

    from llmpy.llama.inference import Transformer, tune_openmp_waiting

    tune_openmp_waiting()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in SHAPES]
    if unknown:
        print(f"llmpy bench run: unknown model shape(s) {unknown}; choose from {list(SHAPES)}")
        return 2
    if args.contended:
        return _contended(args, names)
    from llmpy.bench import llamacpp

    lcpp_missing = "llama.cpp comparison skipped (--no-llamacpp)" if args.no_llamacpp else llamacpp.unavailable()
    if lcpp_missing:
        print(lcpp_missing)
    lcpp_rows = []  # (model, *llamacpp.compare's row)
    probe = _make_probe()
    rows = []  # (model, kind, bytes per token or None, tok/s, read bandwidth, note)
    rng = np.random.default_rng(0)
    for name in names:
        built = _model_weights(name, rng, name in INT8 and not args.no_int8, not args.no_bf16)
        _, config, weights, _ = built[0]
        variants = [(Transformer(config, w, **options), 1) for _, _, w, options in built]
        del built
        if name == "15M" and args.batch > 1:
            variants.append((Transformer(config, weights, n_streams=args.batch), args.batch))
        results = _decode_rates(variants, args.tokens, args.repeats, probe)
        # positions 0..tokens-1 attend over 1..tokens
        kv_bytes = variants[0][0].kv_bytes_per_token((args.tokens + 1) / 2)
        (rate, bw, base_rounds, base_probes) = results[0]
        nbytes = variants[0][0].weight_bytes_per_token() + kv_bytes
        rows.append((name, "fp32", nbytes, rate, bw, _limit_note(nbytes, base_rounds, base_probes)))
        for (t, n_streams), (vrate, vbw, vrounds, vprobes) in zip(variants[1:], results[1:]):
            if n_streams == 1:  # another dtype: against its own limit (the bytes it reads) and against fp32
                kind = {"int8": "int8 Q8_0"}.get(t.dtype, t.dtype)
                vbytes = t.weight_bytes_per_token() + kv_bytes
                note = _limit_note(vbytes, vrounds, vprobes) + "; " + _ratio_note(f"{t.dtype} / fp32", vrate, rate,
                                                                                  vrounds, base_rounds)
                rows.append((name, kind, vbytes, vrate, vbw, note))
            else:
                note = _ratio_note(f"{n_streams} streams / 1 stream", vrate, rate, vrounds, base_rounds)
                rows.append((name, f"fp32 x{n_streams}", None, vrate, None, note + " (tok/s summed over streams)"))
        if not lcpp_missing:
            singles = [t for t, n_streams in variants if n_streams == 1]
            lcpp_rows += [(name, *row) for row in llamacpp.compare(config, weights, singles, args.tokens, args.repeats,
                                                                   _decode_rates)]
        del variants, weights
    print(f"greedy decode of {args.tokens} tokens from BOS, best of {args.repeats} runs (a model's variants take turns "
          "in each round), each right after a read bandwidth probe run\n"
          f"(2 threads, {BW_STREAMS} streams, {BW_PASSES} passes over {BW_BYTES >> 20} MiB); "
          "limit = best probe / bytes per token (and each round against its own probe run: median of rounds)\n"
          "(bytes per token = weights + KV cache read at the average position, "
          f"{(args.tokens + 1) / 2:g} positions)")
    print(f"{'model':>14} {'kind':>10} {'MB/token':>9} {'GB/s':>6} {'limit tok/s':>12} {'tok/s':>8} {'of limit':>9}")
    for name, kind, nbytes, rate, bw, note in rows:
        if nbytes is None:
            print(f"{name:>14} {kind:>10} {'':>9} {'':>6} {'':>12} {rate:8.1f} {'':>9}   {note}")
        else:
            limit = bw / nbytes
            print(f"{name:>14} {kind:>10} {nbytes / 1e6:9.1f} {bw / 1e9:6.1f} {limit:12.1f} {rate:8.1f} "
                  f"{rate / limit:8.0%}   {note}")
    if lcpp_rows:
        print()
        print("\n".join(llamacpp.report(lcpp_rows, args.tokens, args.repeats)))
    return 0
