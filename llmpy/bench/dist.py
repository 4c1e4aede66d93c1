"""`llmpy bench dist`: one data-parallel training step over MPI ranks against one process on the
same total batch, and the time the step spends in communication.

    llmpy bench dist                         # d6, 2 ranks x 1 thread x B=4 vs 1 process x 2 threads x B=8
    llmpy bench dist --depth d12 -b 2        # GPT-2 124M

The single process runs here with `ranks` BLAS/Numba threads on the whole batch (ranks*B rows); then
this command starts `mpirun -np ranks` of itself (sys.executable -m llmpy bench dist --worker) with
one thread per rank and B rows each. A step is forward, backward, gradient averaging, global grad
norm and AdamW (ZeRO stage -z). Communication is the time inside MPI calls, which includes waiting
for the slower rank; the Allreduce of the whole gradient buffer alone (after a barrier) gives the
bandwidth of the transport. What this does not measure: several machines (see docs/distributed.md).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

WARMUP_STEPS = 1
ALLREDUCE_REPEATS = 3


def add_arguments(parser):
    parser.add_argument("--depth", default="d6", help="llm.c depth descriptor (d6, d12, ...); default d6")
    parser.add_argument("-b", "--batch-size", type=int, default=4, help="B per rank (default 4)")
    parser.add_argument("-t", "--seq-len", type=int, default=64, help="T (default 64)")
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks, one thread each (default 2)")
    parser.add_argument("-z", "--zero-stage", type=int, default=0, choices=(0, 1), help="ZeRO stage (default 0)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps; the median is reported (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best is kept (default 2)")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS, default=None)


def timed_steps(dist, args, B):
    """Median step seconds and median communication seconds per step of `args.steps` steps."""
    from llmpy.dist import make_optimizer
    from llmpy.gpt2.model import GPT2, GPT2Config, init_params, matrix_param_ranges, num_parameters
    from llmpy.optim import clip_scale

    config = GPT2Config.from_depth(args.depth)
    rng = np.random.default_rng(1337)
    params = init_params(config, rng)
    model = GPT2(config, params, B, args.seq_len)
    opt = make_optimizer(dist, args.zero_stage, num_parameters(config), lr=3e-4, weight_decay=0.1,
                         decay_ranges=matrix_param_ranges(config))
    tokens = rng.integers(0, config.vocab_size, size=(dist.world_size * B, args.seq_len + 1)).astype(np.int32)
    rows = slice(dist.rank * B, (dist.rank + 1) * B)
    x, y = tokens[rows, :-1].copy(), tokens[rows, 1:].copy()
    steps, comms = [], []
    model.zero_grad()
    for i in range(WARMUP_STEPS + args.steps):
        dist.barrier()
        comm0 = dist.comm_seconds
        t0 = time.perf_counter()
        model.forward(x, y)
        model.backward()
        opt.reduce_gradients(model.grads)
        scale = clip_scale(opt.global_grad_norm(model.grads), 1.0)
        opt.step(model.params, model.grads, grad_scale=scale, zero_grads=True)
        if i >= WARMUP_STEPS:
            steps.append(time.perf_counter() - t0)
            comms.append(dist.comm_seconds - comm0)
    # the Allreduce of the gradient buffer alone, every rank ready
    allreduce = []
    for _ in range(ALLREDUCE_REPEATS):
        dist.barrier()
        t0 = time.perf_counter()
        dist.allreduce_mean_(model.grads)
        allreduce.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(steps), "comm_s": statistics.median(comms),
            "allreduce_s": min(allreduce), "num_params": int(params.size), "m_size": int(opt.m.size)}


def worker(args):
    from llmpy.dist import init_dist
    dist = init_dist(threads=1)
    with dist.abort_on_error():
        result = timed_steps(dist, args, args.batch_size)
        # the slowest rank sets the pace
        for key in ("step_s", "comm_s", "allreduce_s"):
            result[key] = dist.allreduce_scalar(result[key], "max")
        if dist.is_master:
            result.update(world_size=dist.world_size, threads=dist.threads)
            with open(args.worker, "w") as f:
                json.dump(result, f)
    return 0


def run(args):
    if args.worker:
        return worker(args)
    from llmpy.dist import Dist, configure_threads, mpirun_command
    from llmpy.errors import LlmpyError

    R, B, T = args.ranks, args.batch_size, args.seq_len
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise LlmpyError('llmpy bench dist needs mpi4py and an MPI: pip install "llmpy[mpi]"') from None
    cmd = mpirun_command(R)

    print(f"llmpy bench dist: {args.depth}, T={T}, total batch {R * B} rows, ZeRO stage {args.zero_stage}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    # alternate the two setups and keep each one's best round: other load on the machine comes and goes
    configure_threads(1, threads=R)
    single = multi = None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        argv = [sys.executable, "-m", "llmpy", "bench", "dist", "--worker", out, "--depth", args.depth,
                "-b", str(B), "-t", str(T), "-z", str(args.zero_stage), "--steps", str(args.steps)]
        for _ in range(args.rounds):
            s = timed_steps(Dist(), args, R * B)
            single = s if single is None or s["step_s"] < single["step_s"] else single
            proc = subprocess.run(cmd + argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not os.path.exists(out):
                raise LlmpyError(f"the {R}-rank run failed (exit {proc.returncode}): {' '.join(cmd + argv)}\n"
                                 f"{(proc.stdout + proc.stderr)[-3000:]}")
            with open(out) as f:
                m = json.load(f)
            multi = m if multi is None or m["step_s"] < multi["step_s"] else multi
    print(f"  1 process x {R} threads, B={R * B}: {single['step_s'] * 1e3:9.1f} ms/step")

    P = multi["num_params"]
    ring_bytes = 2 * (R - 1) / R * P * 4
    compute = multi["step_s"] - multi["comm_s"]
    print(f"  {R} ranks x 1 thread,  B={B} each: {multi['step_s'] * 1e3:9.1f} ms/step "
          f"(communication {multi['comm_s'] * 1e3:.1f} ms, {multi['comm_s'] / multi['step_s']:.1%} of the step, "
          f"waiting for the slower rank included)")
    print(f"  Allreduce of the {P * 4 / 1e6:.0f} MB gradient alone: {multi['allreduce_s'] * 1e3:.1f} ms "
          f"= {ring_bytes / multi['allreduce_s'] / 1e9:.2f} GB/s per rank (ring: {ring_bytes / 1e6:.0f} MB each way)")
    print(f"  m/v per rank: {multi['m_size']:,} of {P:,} parameters")
    print(f"ratio 1 process / {R} ranks (step time): {single['step_s'] / multi['step_s']:.2f}x "
          f"(> 1: ranks are faster)")
    print(f"ratio compute-only {R} ranks vs 1 process: {compute / single['step_s']:.2f}x of the single step; "
          f"communication / step: {multi['comm_s'] / multi['step_s']:.3f}")
    return 0
