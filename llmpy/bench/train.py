"""`llmpy bench train`: the GPT-2 training step against its own matrix products, the machine's
sgemm peak, and PyTorch eager, all measured in one run.

Default: GPT-2 124M (d12) at B=4, T=64, fp32, the setting of llm.c's CPU quick start. Prints the
median step time, a per-layer breakdown, the step's FLOPs, the time of the same GEMMs alone
(same shapes and layouts, back to back), the sgemm peak on large square matrices, the peak
resident memory of our step, and, when torch is installed, the same step in PyTorch eager with
AdamW. Targets (issue 2): step <= 1.15x matmuls alone, peak RSS <= 2.6 GB.

--contended: the step on the default threads (picked before every step by llmpy/threads.py from the cores
other processes leave free, as `llmpy train` does) against one fixed thread, in alternating rounds, on the
idle machine and then with one CPU-burning process per core started by the bench (bench/contend.py).
Target: under contention the default >= 1.0x one thread (step time ratio one thread / default), idle unchanged.
"""

import resource
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

from llmpy.backend import limit_openmp_spinning, matmul_acc

PROFILED = {  # layer kind -> functions the model calls for it (module attribute names)
    "encoder": ("encoder_forward", "encoder_backward"),
    "layernorm": ("layernorm_forward", "layernorm_backward"),
    "matmul": ("matmul_forward", "matmul_backward"),
    "attention": ("attention_forward", "attention_backward"),
    "gelu": ("gelu_forward", "gelu_backward"),
    "crossentropy": ("crossentropy_forward", "crossentropy_backward_inplace",
                     "softmax_crossentropy_forward", "crossentropy_softmax_backward"),
}


def add_arguments(parser):
    parser.add_argument("--depth", default="d12", help="llm.c depth descriptor (d6, d12, d24, ...); default d12")
    parser.add_argument("-b", "--batch-size", type=int, default=4, help="B (default 4)")
    parser.add_argument("-t", "--seq-len", type=int, default=64, help="T (default 64)")
    parser.add_argument("--steps", type=int, default=15,
                        help="timed rounds of one step and its matmuls alone; medians are reported (default 15)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--contended", action="store_true",
                        help="instead: the default threads against one thread, idle and with a CPU-burning process "
                             "per core (started by the bench), in the same run")


def peak_rss_gb():
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return rss_kb * 1024 / 1e9


def step_flops(cfg, B, T):
    """FLOPs of one training step's matrix products: forward 2*M*N*K each, backward twice that."""
    C, L, NH, Vp = cfg.channels, cfg.num_layers, cfg.num_heads, cfg.padded_vocab_size
    BT = B * T
    per_layer = 2 * BT * C * (3 * C + C + 4 * C + 4 * C)      # qkv, attproj, fc, fcproj
    per_layer += 2 * 2 * B * NH * T * T * (C // NH)          # q @ k.T and att @ v
    forward = L * per_layer + 2 * BT * C * Vp                # + tied lm_head
    return 3 * forward


def gemm_program(cfg, B, T, rng):
    """Closures that run exactly the step's GEMMs (shapes, layouts, accumulation) on random data."""
    C, L, NH, Vp = cfg.channels, cfg.num_layers, cfg.num_heads, cfg.padded_vocab_size
    hs = C // NH
    BT = B * T

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    calls = []

    def linear(C_in, OC):
        inp, w, out, dout = rand(BT, C_in), rand(OC, C_in), rand(BT, OC), rand(BT, OC)
        dinp, dw = rand(BT, C_in), rand(OC, C_in)
        calls.append(lambda: np.matmul(inp, w.T, out=out))      # forward
        calls.append(lambda: matmul_acc(dinp, dout, w, accumulate=False))  # dinp = dout @ w
        calls.append(lambda: matmul_acc(dw, dout.T, inp))       # dw += dout.T @ inp

    def attention():
        qkv, dqkv, y, dy = rand(B, T, 3 * C), rand(B, T, 3 * C), rand(B, T, C), rand(B, T, C)
        att, datt = rand(B, NH, T, T), rand(B, NH, T, T)

        def heads(x, i=0):  # (B,T,*) -> the (B,NH,T,hs) view of its i-th C columns
            return x[:, :, i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3)

        q, k, v = heads(qkv, 0), heads(qkv, 1), heads(qkv, 2)
        dq, dk, dv = heads(dqkv, 0), heads(dqkv, 1), heads(dqkv, 2)
        calls.append(lambda: np.matmul(q, k.transpose(0, 1, 3, 2), out=att))
        calls.append(lambda: np.matmul(att, v, out=heads(y)))
        calls.append(lambda: np.matmul(heads(dy), v.transpose(0, 1, 3, 2), out=datt))
        calls.append(lambda: np.matmul(att.transpose(0, 1, 3, 2), heads(dy), out=dv))
        calls.append(lambda: np.matmul(datt, k, out=dq))
        calls.append(lambda: np.matmul(datt.transpose(0, 1, 3, 2), q, out=dk))

    for _ in range(L):
        linear(C, 3 * C)
        attention()
        linear(C, C)
        linear(C, 4 * C)
        linear(4 * C, C)
    lnf, wte, logits = rand(BT, C), rand(Vp, C), rand(BT, Vp)
    dlnf, dwte = rand(BT, C), rand(Vp, C)
    calls.append(lambda: np.matmul(lnf, wte.T, out=logits))
    calls.append(lambda: matmul_acc(dlnf, logits, wte, accumulate=False))
    calls.append(lambda: matmul_acc(dwte, logits.T, lnf))
    return calls


def time_median(fn, steps, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sgemm_peak(n=4096, repeats=3):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    best = min(time_median(lambda: np.matmul(a, b, out=out), 1, warmup=1) for _ in range(repeats))
    return 2 * n ** 3 / best


class Profiler:
    """Wraps the layer functions the model calls and sums wall time per layer kind."""

    def __init__(self):
        self.totals = defaultdict(float)
        self.saved = []

    def install(self):
        from llmpy.gpt2 import kernels, layers, model
        for kind, names in PROFILED.items():
            for module in (model, layers, kernels):
                for name in names:
                    if hasattr(module, name):
                        fn = getattr(module, name)
                        self.saved.append((module, name, fn))
                        setattr(module, name, self._wrap(fn, kind, "backward" in name))

    def _wrap(self, fn, kind, backward):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.totals[(kind, "backward" if backward else "forward")] += time.perf_counter() - t0
            return out
        return timed

    def uninstall(self):
        for module, name, fn in reversed(self.saved):
            setattr(module, name, fn)
        self.saved.clear()


def contended(args, train_step):
    """Step times on the default threads (the governor) and on one thread, idle and busy, alternating."""
    import contextlib

    import numba

    from llmpy.bench.contend import busy_cpus
    from llmpy.threads import ThreadGovernor, use_threads

    n_max = numba.config.NUMBA_NUM_THREADS
    rows = []
    for busy in (False, True):
        governor = ThreadGovernor(n_max)  # as a run's setup makes it, before its first step
        with busy_cpus() if busy else contextlib.nullcontext():
            default, one = [], []
            for _ in range(args.steps):
                governor.apply()
                default.append(time_median(train_step, 1, warmup=0))
                use_threads(1)
                one.append(time_median(train_step, 1, warmup=0))
            use_threads(n_max)
            rows.append(("busy" if busy else "idle", statistics.median(default), statistics.median(one),
                         statistics.median(o / d for o, d in zip(one, default)), governor.current))
    print(f"step time, median of {args.steps} alternated rounds; busy = one CPU-burning process per core; "
          f"ratio = one thread / default (median of rounds; >= 1.0: the default is no slower)")
    for what, d, o, r, n in rows:
        print(f"  {what}: default {d * 1e3:8.1f} ms ({n} thread(s) at the end), one thread {o * 1e3:8.1f} ms, "
              f"ratio {r:.2f}x")
    return 0


def run(args):
    limit_openmp_spinning()
    from llmpy.gpt2.model import GPT2, GPT2Config, init_params, num_parameters
    from llmpy.optim import AdamW

    cfg = GPT2Config.from_depth(args.depth)
    B, T = args.batch_size, args.seq_len
    rng = np.random.default_rng(args.seed)
    print(f"GPT-2 {args.depth}: {num_parameters(cfg) / 1e6:.1f}M parameters, B={B}, T={T}, fp32")
    params = init_params(cfg, rng)
    model = GPT2(cfg, params, B, T)
    opt = AdamW(params.size, lr=1e-4, weight_decay=0.01)
    x = rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int32)
    y = rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int32)
    model.zero_grad()

    parts = defaultdict(float)

    def train_step():
        t0 = time.perf_counter()
        model.forward(x, y)
        t1 = time.perf_counter()
        model.backward()
        t2 = time.perf_counter()
        opt.step(model.params, model.grads, zero_grads=True)  # llm.c: zero_grad + backward + update
        t3 = time.perf_counter()
        parts["forward"] += t1 - t0
        parts["backward"] += t2 - t1
        parts["optimizer"] += t3 - t2

    for _ in range(2):
        train_step()
    if args.contended:
        return contended(args, train_step)
    rss = peak_rss_gb()  # before the matmuls-alone program allocates its own operands

    # the step and its matmuls alone, alternated, so that both see the same machine (a shared or
    # throttled machine drifts by 10-20% over a minute); the ratio is the median of per-round ratios
    calls = gemm_program(cfg, B, T, np.random.default_rng(0))

    def matmuls_alone():
        for call in calls:
            call()

    matmuls_alone()
    step_times, matmul_times = [], []
    for _ in range(args.steps):
        step_times.append(time_median(train_step, 1, warmup=0))
        matmul_times.append(time_median(matmuls_alone, 1, warmup=0))
    step_time, matmul_time = statistics.median(step_times), statistics.median(matmul_times)
    ratio = statistics.median(s / m for s, m in zip(step_times, matmul_times))

    prof = Profiler()
    prof.install()
    parts.clear()
    for _ in range(args.steps):
        train_step()
    prof.uninstall()

    flops = step_flops(cfg, B, T)
    peak = sgemm_peak()

    print(f"step time (median of {args.steps}): {step_time * 1e3:.1f} ms, "
          f"{flops / step_time / 1e9:.1f} GFLOP/s, {B * T / step_time:.0f} tok/s")
    print(f"step FLOPs (matrix products): {flops / 1e9:.1f} GFLOP")
    print(f"matmuls alone (same {len(calls)} GEMMs, back to back): {matmul_time * 1e3:.1f} ms, "
          f"{flops / matmul_time / 1e9:.1f} GFLOP/s")
    print(f"sgemm peak (4096^3): {peak / 1e9:.1f} GFLOP/s; step reaches {flops / step_time / peak:.1%} of it")
    print(f"ratio step / matmuls alone: {ratio:.3f}  (target <= 1.15; median of {args.steps} alternated rounds, "
          f"min {min(s / m for s, m in zip(step_times, matmul_times)):.3f}, "
          f"max {max(s / m for s, m in zip(step_times, matmul_times)):.3f})")
    # on a shared machine noise only ever adds time, so the best of each side is the other usual estimate
    print(f"best step / best matmuls alone: {min(step_times) * 1e3:.1f} / {min(matmul_times) * 1e3:.1f} ms = "
          f"{min(step_times) / min(matmul_times):.3f}")
    print(f"peak resident memory: {rss:.2f} GB  (target <= 2.6 GB; llm.c's C 2.52 GB)")
    n = args.steps
    print("breakdown per step (profiled run):")
    for phase in ("forward", "backward"):
        print(f"  {phase:<9} {parts[phase] / n * 1e3:8.1f} ms")
        for kind in PROFILED:
            t = prof.totals.get((kind, phase), 0.0) / n
            print(f"    {kind:<13} {t * 1e3:8.1f} ms")
        other = parts[phase] / n - sum(prof.totals.get((k, phase), 0.0) for k in PROFILED) / n
        print(f"    {'other':<13} {other * 1e3:8.1f} ms  (residual adds, buffer zeroing, Python)")
    print(f"  {'optimizer':<9} {parts['optimizer'] / n * 1e3:8.1f} ms  (AdamW over {params.size / 1e6:.0f}M, "
          f"grads zeroed in the same pass)")

    if args.no_torch:
        return 0
    try:
        import torch
    except ImportError:
        print("PyTorch not installed: skipping the comparison (pip install torch)")
        return 0
    from llmpy.bench.torch_gpt2 import torch_step_time
    torch_time = torch_step_time(cfg, params, x, y, args.steps)
    print(f"PyTorch {torch.__version__} eager (fp32, AdamW), {torch.get_num_threads()} threads: "
          f"{torch_time * 1e3:.1f} ms per step")
    print(f"speedup over PyTorch eager: {torch_time / step_time:.2f}x  (goal 2.5x)")
    sys.stdout.flush()
    return 0
