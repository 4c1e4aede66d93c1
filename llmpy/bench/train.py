"""`llmpy bench train`: a training step against its own matrix products, the machine's sgemm peak, and
PyTorch eager, all measured in one run, for either model family.

    llmpy bench train                    # GPT-2 124M (d12), B=4, T=64: llm.c's CPU quick start
    llmpy bench train --arch llama       # stories110M's shape (dim 768, 12 layers, 12 heads, hidden 2048,
                                         # vocab 32000), B=4, T=256
    llmpy bench train --arch llama --dim 64 --n-layers 2 --n-heads 4 --hidden-dim 96 --vocab-size 512 -t 32

Prints the median step time (forward, backward, AdamW), a per-layer breakdown, the step's FLOPs, the time of
the same GEMMs alone (same shapes and layouts, back to back), the sgemm peak on large square matrices, the
peak resident memory of our step, and, when torch is installed, the same step in PyTorch eager with AdamW and
PyTorch's peak resident memory. The PyTorch step runs in a child process (same seed, so the same parameters
and batch), so that each peak RSS is its own side's alone.
Targets: GPT-2 (issue 2): step <= 1.15x matmuls alone, peak RSS <= 2.6 GB. Llama (issue 16): step <= 1.15x
matmuls alone, >= 3x PyTorch eager, peak RSS below PyTorch's.

--contended: the step on the default threads (picked before every step by llmpy/threads.py from the cores
other processes leave free, as `llmpy train` does) against one fixed thread, in alternating rounds, on the
idle machine and then with one CPU-burning process per core started by the bench (bench/contend.py).
Target: under contention the default >= 1.0x one thread (step time ratio one thread / default), idle unchanged.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np

from llmpy.backend import limit_openmp_spinning, matmul_acc
from llmpy.errors import LlmpyError

CROSSENTROPY = ("crossentropy_forward", "crossentropy_backward_inplace", "softmax_crossentropy_forward",
                "crossentropy_softmax_backward")

PROFILED_GPT2 = {  # layer kind -> functions the model calls for it (module attribute names)
    "encoder": ("encoder_forward", "encoder_backward"),
    "layernorm": ("layernorm_forward", "layernorm_backward"),
    "matmul": ("matmul_forward", "matmul_backward"),
    "attention": ("attention_forward", "attention_backward"),
    "gelu": ("gelu_forward", "gelu_backward"),
    "crossentropy": CROSSENTROPY,
}
PROFILED_LLAMA = {
    "embedding": ("embedding_forward", "embedding_backward"),
    "rmsnorm": ("rmsnorm_forward", "rmsnorm_backward"),
    "matmul": ("linear_forward", "linear_backward", "_residual_linear"),
    "rope": ("rope_forward", "rope_backward"),
    "attention": ("attention_forward", "attention_backward"),
    "swiglu": ("swiglu_forward", "swiglu_backward"),
    "crossentropy": CROSSENTROPY,
}


def add_arguments(parser):
    parser.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2", help="model family (default gpt2)")
    parser.add_argument("--depth", default="d12", help="GPT-2: llm.c depth descriptor (d6, d12, d24, ...); default d12")
    llama = parser.add_argument_group("Llama shape (default stories110M's)")
    llama.add_argument("--dim", type=int, default=768)
    llama.add_argument("--n-layers", type=int, default=12)
    llama.add_argument("--n-heads", type=int, default=12)
    llama.add_argument("--n-kv-heads", type=int, help="key/value heads (default: --n-heads)")
    llama.add_argument("--hidden-dim", type=int, default=2048)
    llama.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("-b", "--batch-size", type=int, default=4, help="B (default 4)")
    parser.add_argument("-t", "--seq-len", type=int, help="T (default 64 for GPT-2, 256 for Llama)")
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


# ----------------------------------------------------------------------------
# the step's GEMMs alone: the same shapes, layouts and accumulation on random data

class GemmProgram:
    """A list of closures, each one GEMM of the step; `linear` adds a layer's three (forward, dinp, dweight)."""

    def __init__(self, rng):
        self.rng = rng
        self.calls = []

    def rand(self, *shape):
        return self.rng.standard_normal(shape, dtype=np.float32)

    def linear(self, M, C_in, OC, residual=False, add_dinp=False):
        """residual: out = residual + inp @ w.T, the GEMM adding onto the copied residual (beta=1);
        add_dinp: dinp += dout @ w, for an input that feeds several linears."""
        inp, w, out, dout = self.rand(M, C_in), self.rand(OC, C_in), self.rand(M, OC), self.rand(M, OC)
        dinp, dw = self.rand(M, C_in), self.rand(OC, C_in)
        if residual:
            self.calls.append(lambda: matmul_acc(out, inp, w.T))
        else:
            self.calls.append(lambda: np.matmul(inp, w.T, out=out))
        self.calls.append(lambda: matmul_acc(dinp, dout, w, accumulate=add_dinp))  # dinp (+)= dout @ w
        self.calls.append(lambda: matmul_acc(dw, dout.T, inp))                     # dw += dout.T @ inp

    def run(self):
        for call in self.calls:
            call()


# ----------------------------------------------------------------------------
# the model families: what the shared run needs of each

def seeded_data(init_params, cfg, B, T, seed):
    """(params, x, y) of a family's init and random token batches, the same for the same seed."""
    rng = np.random.default_rng(seed)
    params = init_params(cfg, rng)
    x = rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int32)
    y = rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int32)
    return params, x, y


class GPT2Bench:
    name = "GPT-2"
    profiled = PROFILED_GPT2
    rss_target = "target <= 2.6 GB; llm.c's C 2.52 GB"
    torch_goal = "goal 2.5x"

    def __init__(self, args):
        from llmpy.gpt2.model import GPT2Config

        self.depth = args.depth
        try:
            self.cfg = GPT2Config.from_depth(args.depth)
        except ValueError as e:
            raise LlmpyError(f"--depth: {e}") from None
        self.B, self.T = args.batch_size, args.seq_len or 64

    def title(self, n_params):
        return f"GPT-2 {self.depth}: {n_params / 1e6:.1f}M parameters, B={self.B}, T={self.T}, fp32"

    def data(self, seed):
        """(params, x, y), the same for the same seed (the PyTorch child rebuilds them)."""
        from llmpy.gpt2.model import init_params

        return seeded_data(init_params, self.cfg, self.B, self.T, seed)

    def model(self, params):
        from llmpy.gpt2.model import GPT2
        from llmpy.optim import AdamW

        return GPT2(self.cfg, params, self.B, self.T), AdamW(params.size, lr=1e-4, weight_decay=0.01)

    def modules(self):
        from llmpy.gpt2 import kernels, layers, model
        return (model, layers, kernels)

    def flops(self):
        """FLOPs of one training step's matrix products: forward 2*M*N*K each, backward twice that."""
        cfg, B, T = self.cfg, self.B, self.T
        C, L, NH, Vp = cfg.channels, cfg.num_layers, cfg.num_heads, cfg.padded_vocab_size
        per_layer = 2 * B * T * C * (3 * C + C + 4 * C + 4 * C)  # qkv, attproj, fc, fcproj
        per_layer += 2 * 2 * B * NH * T * T * (C // NH)         # q @ k.T and att @ v
        return 3 * (L * per_layer + 2 * B * T * C * Vp)         # + tied lm_head

    def gemms(self, rng):
        cfg, B, T = self.cfg, self.B, self.T
        C, L, NH, Vp = cfg.channels, cfg.num_layers, cfg.num_heads, cfg.padded_vocab_size
        hs, BT = C // NH, B * T
        g = GemmProgram(rng)

        def attention():
            qkv, dqkv, y, dy = g.rand(B, T, 3 * C), g.rand(B, T, 3 * C), g.rand(B, T, C), g.rand(B, T, C)
            att, datt = g.rand(B, NH, T, T), g.rand(B, NH, T, T)

            def heads(x, i=0):  # (B,T,*) -> the (B,NH,T,hs) view of its i-th C columns
                return x[:, :, i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3)

            q, k, v = heads(qkv, 0), heads(qkv, 1), heads(qkv, 2)
            dq, dk, dv = heads(dqkv, 0), heads(dqkv, 1), heads(dqkv, 2)
            g.calls.append(lambda: np.matmul(q, k.transpose(0, 1, 3, 2), out=att))
            g.calls.append(lambda: np.matmul(att, v, out=heads(y)))
            g.calls.append(lambda: np.matmul(heads(dy), v.transpose(0, 1, 3, 2), out=datt))
            g.calls.append(lambda: np.matmul(att.transpose(0, 1, 3, 2), heads(dy), out=dv))
            g.calls.append(lambda: np.matmul(datt, k, out=dq))
            g.calls.append(lambda: np.matmul(datt.transpose(0, 1, 3, 2), q, out=dk))

        for _ in range(L):
            g.linear(BT, C, 3 * C)
            attention()
            g.linear(BT, C, C)
            g.linear(BT, C, 4 * C)
            g.linear(BT, 4 * C, C)
        g.linear(BT, C, Vp)  # the tied lm_head
        return g

    def torch_step_time(self, params, x, y, steps):
        from llmpy.bench.torch_gpt2 import torch_step_time
        return torch_step_time(self.cfg, params, x, y, steps), None


class LlamaBench:
    name = "Llama"
    profiled = PROFILED_LLAMA
    rss_target = "target: below PyTorch's"
    torch_goal = "target >= 3x"
    # llama2.c's train.py: AdamW lr 5e-4, betas (0.9, 0.95), weight decay 0.1 on the 2-D weights
    LR, BETAS, WEIGHT_DECAY = 5e-4, (0.9, 0.95), 0.1

    def __init__(self, args):
        from llmpy.llama.train_model import make_config

        self.B, self.T = args.batch_size, args.seq_len or 256
        self.cfg = make_config(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                               n_kv_heads=args.n_kv_heads, hidden_dim=args.hidden_dim, vocab_size=args.vocab_size,
                               max_seq_len=self.T)

    def title(self, n_params):
        c = self.cfg
        return (f"Llama dim {c.dim}, {c.n_layers} layers, {c.n_heads} heads ({c.n_kv_heads} kv), hidden "
                f"{c.hidden_dim}, vocab {c.vocab_size}: {n_params / 1e6:.1f}M parameters, B={self.B}, T={self.T}, "
                "fp32")

    def data(self, seed):
        from llmpy.llama.train_model import init_params

        return seeded_data(init_params, self.cfg, self.B, self.T, seed)

    def model(self, params):
        from llmpy.llama.train_model import Llama, matrix_param_ranges
        from llmpy.optim import AdamW

        opt = AdamW(params.size, lr=self.LR, beta1=self.BETAS[0], beta2=self.BETAS[1], weight_decay=self.WEIGHT_DECAY,
                    decay_ranges=matrix_param_ranges(self.cfg))
        return Llama(self.cfg, params, self.B, self.T), opt

    def modules(self):
        from llmpy.gpt2 import kernels
        from llmpy.llama import layers, train_kernels, train_model
        return (train_model, layers, train_kernels, kernels)

    def flops(self):
        c, B, T = self.cfg, self.B, self.T
        C, H, KV, NH = c.dim, c.hidden_dim, c.kv_dim, c.n_heads
        per_layer = 2 * B * T * C * (C + 2 * KV + C + 3 * H)   # wq, wk, wv, wo, w1, w3, w2
        per_layer += 2 * 2 * B * NH * T * T * c.head_size       # q @ k.T and att @ v
        return 3 * (c.n_layers * per_layer + 2 * B * T * C * c.vocab_size)  # + the classifier

    def gemms(self, rng):
        c, B, T = self.cfg, self.B, self.T
        C, H, KV, NH, NKV, hs = c.dim, c.hidden_dim, c.kv_dim, c.n_heads, c.n_kv_heads, c.head_size
        G, BT = NH // NKV, B * T
        g = GemmProgram(rng)

        def attention():
            # as llmpy.llama.train_kernels: (B,T,*) buffers seen as (B,NKV,G,T,hs) head views, query heads
            # grouped over their kv head; dk, dv sum over the group inside one GEMM (rows stacked head-major)
            from llmpy.llama.train_kernels import _heads

            q, dq, y, dy = g.rand(B, T, C), g.rand(B, T, C), g.rand(B, T, C), g.rand(B, T, C)
            k, v, dk, dv = g.rand(B, T, KV), g.rand(B, T, KV), g.rand(B, T, KV), g.rand(B, T, KV)
            att, datt, stacked = g.rand(B, NKV, G, T, T), g.rand(B, NKV, G, T, T), g.rand(B, NKV, G * T, hs)
            q5, k5, v5, dy5 = _heads(q, NKV, G), _heads(k, NKV, 1), _heads(v, NKV, 1), _heads(dy, NKV, G)
            dk4, dv4 = _heads(dk, NKV, 1)[:, :, 0], _heads(dv, NKV, 1)[:, :, 0]
            g.calls.append(lambda: np.matmul(q5, k5.swapaxes(-1, -2), out=att))
            g.calls.append(lambda: np.matmul(att, v5, out=_heads(y, NKV, G)))
            g.calls.append(lambda: np.matmul(dy5, v5.swapaxes(-1, -2), out=datt))
            g.calls.append(lambda: np.matmul(datt, k5, out=_heads(dq, NKV, G)))
            if G == 1:
                g.calls.append(lambda: np.matmul(att[:, :, 0].swapaxes(-1, -2), dy5[:, :, 0], out=dv4))
                g.calls.append(lambda: np.matmul(datt[:, :, 0].swapaxes(-1, -2), q5[:, :, 0], out=dk4))
            else:
                g.calls.append(lambda: np.matmul(att.reshape(B, NKV, G * T, T).swapaxes(-1, -2), stacked, out=dv4))
                g.calls.append(lambda: np.matmul(datt.reshape(B, NKV, G * T, T).swapaxes(-1, -2), stacked, out=dk4))

        for _ in range(c.n_layers):
            g.linear(BT, C, C)                      # wq
            g.linear(BT, C, KV, add_dinp=True)      # wk, wv: their input gradients add onto wq's
            g.linear(BT, C, KV, add_dinp=True)
            attention()
            g.linear(BT, C, C, residual=True)       # wo
            g.linear(BT, C, H)                      # w1
            g.linear(BT, C, H, add_dinp=True)       # w3
            g.linear(BT, H, C, residual=True)       # w2
        g.linear(BT, C, c.vocab_size)  # the classifier
        return g

    def torch_step_time(self, params, x, y, steps):
        from llmpy.bench.torch_llama import torch_step_time
        return torch_step_time(self.cfg, params, x, y, steps, self.LR, self.BETAS, self.WEIGHT_DECAY)


ARCHS = {"gpt2": GPT2Bench, "llama": LlamaBench}


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
    """Wraps the layer functions the model calls (names in `profiled`, looked up in `modules`) and sums wall
    time per layer kind."""

    def __init__(self, profiled, modules):
        self.profiled, self.modules = profiled, modules
        self.totals = defaultdict(float)
        self.saved = []

    def install(self):
        for kind, names in self.profiled.items():
            for module in self.modules:
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


# ----------------------------------------------------------------------------
# PyTorch eager in a child process: its own peak RSS, not ours

TORCH_CHILD = "import sys; from llmpy.bench.train import torch_child; sys.exit(torch_child(sys.argv[1]))"


def torch_child(spec):
    """In the child: rebuild the bench from the parent's arguments (JSON), time PyTorch's step, print JSON."""
    import torch

    args = argparse.Namespace(**json.loads(spec))
    bench = ARCHS[args.arch](args)
    params, x, y = bench.data(args.seed)
    seconds, first_loss = bench.torch_step_time(params, x, y, args.steps)
    print(json.dumps({"seconds": seconds, "first_loss": first_loss, "peak_rss_gb": peak_rss_gb(),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


def torch_in_child(args, env=None):
    """The PyTorch step run in a fresh interpreter: {seconds, first_loss (None for GPT-2), peak_rss_gb, torch,
    threads}. env: the child's environment (run passes the user's, without the OpenMP setting made for ours)."""
    plain = (str, int, float, bool, type(None))
    spec = {k: v for k, v in vars(args).items() if not k.startswith("_") and isinstance(v, plain)}
    done = subprocess.run([sys.executable, "-c", TORCH_CHILD, json.dumps(spec)], capture_output=True, text=True,
                          check=False, env=env)
    if done.returncode != 0:
        raise LlmpyError(f"the PyTorch step failed in its child process (exit {done.returncode}):\n"
                         f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# the run

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
    user_env = dict(os.environ)  # PyTorch runs as the user would run it, not with our GOMP_SPINCOUNT
    limit_openmp_spinning()
    bench = ARCHS[args.arch](args)
    params, x, y = bench.data(args.seed)
    B, T = x.shape
    print(bench.title(params.size))
    model, opt = bench.model(params)
    model.zero_grad()

    parts = defaultdict(float)
    losses = []

    def train_step():
        t0 = time.perf_counter()
        losses.append(model.forward(x, y))
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
    gemms = bench.gemms(np.random.default_rng(0))
    gemms.run()
    step_times, matmul_times = [], []
    for _ in range(args.steps):
        step_times.append(time_median(train_step, 1, warmup=0))
        matmul_times.append(time_median(gemms.run, 1, warmup=0))
    step_time, matmul_time = statistics.median(step_times), statistics.median(matmul_times)
    ratios = [s / m for s, m in zip(step_times, matmul_times)]
    del gemms

    prof = Profiler(bench.profiled, bench.modules())
    prof.install()
    parts.clear()
    try:
        for _ in range(args.steps):
            train_step()
    finally:
        prof.uninstall()

    flops = bench.flops()
    peak = sgemm_peak()

    print(f"step time (median of {args.steps}): {step_time * 1e3:.1f} ms, "
          f"{flops / step_time / 1e9:.1f} GFLOP/s, {B * T / step_time:.0f} tok/s")
    print(f"step FLOPs (matrix products): {flops / 1e9:.1f} GFLOP")
    print(f"matmuls alone (the same GEMMs, back to back): {matmul_time * 1e3:.1f} ms, "
          f"{flops / matmul_time / 1e9:.1f} GFLOP/s")
    print(f"sgemm peak (4096^3): {peak / 1e9:.1f} GFLOP/s; step reaches {flops / step_time / peak:.1%} of it")
    print(f"ratio step / matmuls alone: {statistics.median(ratios):.3f}  (target <= 1.15; median of {args.steps} "
          f"alternated rounds, min {min(ratios):.3f}, max {max(ratios):.3f})")
    # on a shared machine noise only ever adds time, so the best of each side is the other usual estimate
    print(f"best step / best matmuls alone: {min(step_times) * 1e3:.1f} / {min(matmul_times) * 1e3:.1f} ms = "
          f"{min(step_times) / min(matmul_times):.3f}")
    print(f"peak resident memory: {rss:.2f} GB  ({bench.rss_target})")
    n = args.steps
    print("breakdown per step (profiled run):")
    for phase in ("forward", "backward"):
        print(f"  {phase:<9} {parts[phase] / n * 1e3:8.1f} ms")
        for kind in bench.profiled:
            t = prof.totals.get((kind, phase), 0.0) / n
            print(f"    {kind:<13} {t * 1e3:8.1f} ms")
        other = parts[phase] / n - sum(prof.totals.get((k, phase), 0.0) for k in bench.profiled) / n
        print(f"    {'other':<13} {other * 1e3:8.1f} ms  (residual adds, buffer zeroing, Python)")
    print(f"  {'optimizer':<9} {parts['optimizer'] / n * 1e3:8.1f} ms  (AdamW over {params.size / 1e6:.0f}M, "
          f"grads zeroed in the same pass)")

    if args.no_torch:
        return 0
    try:
        import torch  # noqa: F401  (only to know it is there: the step runs in a child process)
    except ImportError:
        print("PyTorch not installed: skipping the comparison (pip install torch)")
        return 0
    sys.stdout.flush()
    result = torch_in_child(args, user_env)
    torch_time, torch_rss = result["seconds"], result["peak_rss_gb"]
    print(f"PyTorch {result['torch']} eager (fp32, AdamW), {result['threads']} threads, in a child process: "
          f"{torch_time * 1e3:.1f} ms per step, peak resident memory {torch_rss:.2f} GB")
    if result["first_loss"] is not None:  # the same model on the same batch: the first losses agree
        print(f"first step's loss: ours {losses[0]:.6f}, PyTorch {result['first_loss']:.6f}")
    print(f"speedup over PyTorch eager: {torch_time / step_time:.2f}x  ({bench.torch_goal})")
    # a step can be no faster than its matrix products at the sgemm peak: the most any implementation gets here
    print(f"  ceiling: PyTorch's step / the step's FLOPs at the sgemm peak ({flops / peak * 1e3:.1f} ms) = "
          f"{torch_time / (flops / peak):.2f}x")
    print(f"peak resident memory ours / PyTorch's: {rss:.2f} / {torch_rss:.2f} GB = {rss / torch_rss:.2f}")
    sys.stdout.flush()
    return 0
