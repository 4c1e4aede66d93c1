"""`llmpy bench quality`: from-scratch GPT-2 on tinyshakespeare, val loss against wall time, and the same
configuration's per-step train losses against a PyTorch reference (tests/reference/train_torch.py).

    llmpy bench quality --minutes 15 --data /work/shared/data/tinyshakespeare/input.txt

Phase 1 trains with `llmpy train`'s loop for a planned number of steps sized to --minutes (from a short
timing run), evaluating every --val-every steps, and reports the val loss reached by 5, 15 and 30 minutes
(whatever the run covers). Phase 2 trains the same init on the same batches for --compare-steps steps in
llmpy and in PyTorch (float32 autograd + torch.optim.AdamW), and reports the per-step loss differences.
The machine is shared: the load average is printed with the results.
"""

import io
import math
import os
import sys
import time
from pathlib import Path

REPORT_MINUTES = (5, 15, 30)
PROBE_STEPS = 5


def add_arguments(parser):
    parser.add_argument("--data", default=None, help="tinyshakespeare input.txt (default: download)")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-time budget of phase 1")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("-b", "--batch-size", type=int, default=8)
    parser.add_argument("-t", "--seq-len", type=int, default=128)
    parser.add_argument("-l", "--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--final-frac", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--val-batches", type=int, default=16)
    parser.add_argument("--compare-steps", type=int, default=40, help="steps of the PyTorch comparison (0: skip)")
    parser.add_argument("-o", "--output-dir", default="runs/bench_quality")
    parser.add_argument("--skip-train", action="store_true", help="only the PyTorch comparison")


def _config(args, data, out, steps, **extra):
    from llmpy.train.config import TrainConfig
    train, val = data
    values = {"train_data": train, "val_data": val, "num_layers": args.layers, "channels": args.channels,
              "num_heads": args.heads, "max_seq_len": max(args.seq_len, 128), "batch_size": args.batch_size,
              "seq_len": args.seq_len, "max_steps": steps, "lr": args.lr,
              "warmup_steps": min(args.warmup, steps // 2), "final_lr_frac": args.final_frac,
              "weight_decay": args.weight_decay, "val_every": args.val_every, "val_max_steps": args.val_batches,
              "gen_tokens": 64, "sample_every": 0, "output_dir": out, "overwrite": True, "progress": "lines"}
    return TrainConfig(**(values | extra))


def _load():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(args):
    import numpy as np

    from llmpy.data.dataloader import DataLoader
    from llmpy.data.prepro import prepare_tinyshakespeare
    from llmpy.gpt2.model import init_params
    from llmpy.train.loop import Trainer

    data = prepare_tinyshakespeare(source=args.data)
    out = Path(args.output_dir)
    print(f"load average at start: {_load()} (2-core machine shared with other work)")
    if not args.skip_train:
        probe = Trainer(_config(args, data, str(out / "probe"), PROBE_STEPS, plot=False, val_every=0, gen_tokens=0,
                                val_data=""), stream=io.StringIO())
        step_ms = probe.run()["step_ms"]
        per_step = float(np.median([step_ms[s] for s in range(1, PROBE_STEPS)])) / 1e3  # step 0 warms caches up
        steps = max(10, int(args.minutes * 60 / (per_step * 1.15)))  # ~15% for val passes
        print(f"probe: {per_step:.2f} s/step -> planning {steps} steps for {args.minutes:g} minutes")
        trainer = Trainer(_config(args, data, str(out / "train"), steps))
        summary = trainer.run()
        print(f"load average at end: {_load()}")
        print("step  minutes  val_loss")
        for s in sorted(summary["val_losses"]):
            print(f"{s:5d}  {summary['val_seconds'][s] / 60:7.2f}  {summary['val_losses'][s]:.4f}")
        for minutes in REPORT_MINUTES:
            within = [s for s in summary["val_losses"] if summary["val_seconds"][s] <= minutes * 60 + 1]
            if within and minutes <= args.minutes + 0.5:
                s = max(within)
                print(f"val loss by {minutes:2d} min: {summary['val_losses'][s]:.4f} (step {s})")
    if args.compare_steps:
        ref_dir = Path(__file__).resolve().parents[2] / "tests" / "reference"
        if not (ref_dir / "train_torch.py").is_file():
            print("PyTorch comparison skipped: tests/reference/train_torch.py is not in this checkout")
            return 0
        sys.path.insert(0, str(ref_dir))
        import train_torch

        n = args.compare_steps
        cfg = _config(args, data, str(out / "compare"), n, plot=False, val_every=0, gen_tokens=0, val_data="")
        trainer = Trainer(cfg, stream=io.StringIO())
        init = trainer.model.params.copy()
        t0 = time.perf_counter()
        ours = trainer.run()["train_losses"]
        ours_s = (time.perf_counter() - t0) / n
        mc = trainer.model_config
        assert np.array_equal(init, init_params(mc, np.random.default_rng(cfg.seed))), "init must be reproducible"
        loader = DataLoader(cfg.train_data, cfg.batch_size, cfg.seq_len, shuffle=True, seed=cfg.seed)
        batches = iter(loader.next_batch, None)
        theirs, secs = train_torch.train(init, mc, batches, n, lr=cfg.lr, warmup=cfg.warmup_steps,
                                         final_frac=cfg.final_lr_frac, weight_decay=cfg.weight_decay)
        diffs = [abs(ours[s] - theirs[s]) for s in range(n)]
        print(f"per-step train loss, llmpy vs PyTorch, same init and batches ({n} steps):")
        for s in range(0, n, max(1, n // 10)):
            print(f"  step {s:4d}: llmpy {ours[s]:.4f}  torch {theirs[s]:.4f}  |diff| {diffs[s]:.2e}")
        print(f"  max |diff| {max(diffs):.2e}, mean |diff| {sum(diffs) / n:.2e}, last {diffs[-1]:.2e}; "
              f"step time llmpy {ours_s * 1e3:.0f} ms, torch {np.median(secs) * 1e3:.0f} ms (load {_load()})")
        if not math.isfinite(max(diffs)):
            return 1
    return 0


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
