"""`llmpy bench quality`: a from-scratch model on tinyshakespeare, val loss against wall time, and the same
configuration's per-step train losses against a PyTorch reference (tests/reference/train_torch.py).

    llmpy bench quality --minutes 5,15 --data /work/shared/data/tinyshakespeare/input.txt
    llmpy bench quality --arch llama --minutes 5,15 --data .../input.txt   # 4096-token sentencepiece vocabulary

--arch gpt2 (default): llm.c's GPT-2 (L, C, NH from --layers, --channels, --heads) on GPT-2 tokens.
--arch llama: llama2.c's Llama, `llmpy train -e llama:d<C>l<L>h<NH>[kv<NKV>]`, on tinyshakespeare tokenized
with a sentencepiece vocabulary of --vocab-size tokens (default 4096) trained on it (`llmpy prepro
tinyshakespeare --vocab-size 4096`: llm.c's sections after BOS, the first 32,768 tokens are val).

Phase 1 trains with `llmpy train`'s loop (llmpy.train.loop.Trainer) for a number of steps planned from a short
timing run to end by the last of --minutes, evaluating every --val-every steps, and reports the val loss
reached by each mark of --minutes (the last val pass at or before it; for the last mark, the final one). One
run with one cosine schedule serves every mark, so an earlier mark sees a model still at a high learning
rate. Phase 2 trains the same init on the same batches for --compare-steps steps in llmpy's Trainer and in
PyTorch (float32 autograd + torch.optim.AdamW, the model written from llm.c's train_gpt2.py or llama2.c's
model.py), and prints every step's two losses and their difference. The machine is shared: the load
average is printed with the results.
"""

import io
import math
import os
import sys
import time
from pathlib import Path

PROBE_STEPS = 5
LLAMA_VOCAB = 4096


def add_arguments(parser):
    parser.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"], help="model family (default gpt2)")
    parser.add_argument("--data", default=None, help="tinyshakespeare input.txt (default: download)")
    parser.add_argument("--minutes", default="5,15",
                        help="wall-clock marks in minutes, comma-separated: the run lasts until the last (5,15)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--channels", type=int, default=128, help="C (a Llama's dim)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=None, help="Llama: key/value heads (default: --heads)")
    parser.add_argument("--vocab-size", type=int, default=LLAMA_VOCAB,
                        help=f"Llama: sentencepiece vocabulary trained on the data (default {LLAMA_VOCAB})")
    parser.add_argument("-b", "--batch-size", type=int, default=8)
    parser.add_argument("-t", "--seq-len", type=int, default=128)
    parser.add_argument("-l", "--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--final-frac", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--val-batches", type=int, default=16)
    parser.add_argument("--compare-steps", type=int, default=40, help="steps of the PyTorch comparison (0: skip)")
    parser.add_argument("-o", "--output-dir", default=None, help="default runs/bench_quality[_llama]")
    parser.add_argument("--skip-train", action="store_true", help="only the PyTorch comparison")


def parse_marks(text):
    """--minutes "5,15" -> [5.0, 15.0] (sorted); an LlmpyError for anything but positive numbers."""
    from llmpy.errors import LlmpyError

    try:
        marks = sorted(float(m) for m in str(text).split(","))
    except ValueError:
        marks = []
    if not marks or not all(m > 0 and math.isfinite(m) for m in marks):
        raise LlmpyError(f"--minutes {text}: give positive minutes, comma-separated (e.g. 5,15)")
    return marks


def model_init(args):
    """`llmpy train -e` of the benchmark's model: "" (a GPT-2 of --layers/--channels/--heads) or a Llama shape."""
    if args.arch == "gpt2":
        return ""
    kv = f"kv{args.kv_heads}" if args.kv_heads else ""
    return f"llama:d{args.channels}l{args.layers}h{args.heads}{kv}"


def _config(args, data, out, steps, **extra):
    from llmpy.train.config import TrainConfig
    train, val = data
    values = {"train_data": train, "val_data": val, "init": model_init(args), "num_layers": args.layers,
              "channels": args.channels, "num_heads": args.heads, "max_seq_len": max(args.seq_len, 128),
              "batch_size": args.batch_size, "seq_len": args.seq_len, "max_steps": steps, "lr": args.lr,
              "warmup_steps": min(args.warmup, steps // 2), "final_lr_frac": args.final_frac,
              "weight_decay": args.weight_decay, "val_every": args.val_every, "val_max_steps": args.val_batches,
              "gen_tokens": 64, "sample_every": 0, "output_dir": out, "overwrite": True, "progress": "lines"}
    return TrainConfig(**(values | extra))


def _load():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def val_loss_at_marks(summary, marks):
    """[(mark, step, minutes, val loss)]: the last val pass by each mark; the final pass for the last mark."""
    steps = sorted(summary["val_losses"])
    rows = []
    for i, mark in enumerate(marks):
        within = [s for s in steps if summary["val_seconds"][s] <= mark * 60]
        s = steps[-1] if i == len(marks) - 1 else (max(within) if within else None)
        if s is not None:
            rows.append((mark, s, summary["val_seconds"][s] / 60, summary["val_losses"][s]))
    return rows


def train_phase(args, data, out, marks):
    """Phase 1: a timing probe, then one run planned to end by the last mark; prints val loss per mark."""
    import numpy as np

    from llmpy.train.loop import Trainer

    probe = Trainer(_config(args, data, str(out / "probe"), PROBE_STEPS, plot=False, val_every=0, gen_tokens=0,
                            val_data=""), stream=io.StringIO())
    step_ms = probe.run()["step_ms"]
    per_step = float(np.median([step_ms[s] for s in range(1, PROBE_STEPS)])) / 1e3  # step 0 warms caches up
    budget = marks[-1]
    steps = max(10, int(budget * 60 / (per_step * 1.15)))  # ~15% for val passes
    print(f"probe: {per_step:.2f} s/step -> planning {steps} steps for {budget:g} minutes")
    trainer = Trainer(_config(args, data, str(out / "train"), steps))
    print(f"model: {trainer.family.describe()}, {trainer.family.num_parameters:,} parameters")
    summary = trainer.run()
    print(f"load average at end: {_load()}")
    print("step  minutes  val_loss")
    for s in sorted(summary["val_losses"]):
        print(f"{s:5d}  {summary['val_seconds'][s] / 60:7.2f}  {summary['val_losses'][s]:.4f}")
    for mark, s, minutes, loss in val_loss_at_marks(summary, marks):
        print(f"val loss by {mark:g} min: {loss:.4f} (step {s}, at {minutes:.2f} min)")


def compare_losses(args, data, out, train_torch):
    """Phase 2's numbers: (llmpy's per-step losses, PyTorch's, llmpy's seconds per step, PyTorch's, the model)
    of --compare-steps steps from the same init on the same batches; train_torch: tests/reference/train_torch."""
    from llmpy.data.dataloader import DataLoader
    from llmpy.train.loop import SHUFFLES, Trainer

    n = args.compare_steps
    cfg = _config(args, data, str(out / "compare"), n, plot=False, val_every=0, gen_tokens=0, val_data="")
    trainer = Trainer(cfg, stream=io.StringIO())
    init = trainer.model.params.copy()   # the init the Trainer drew from its seed: PyTorch starts from it
    t0 = time.perf_counter()
    summary = trainer.run()["train_losses"]
    ours_s = (time.perf_counter() - t0) / n
    config = trainer.family.config
    model = train_torch.llama_model(config) if args.arch == "llama" else None
    loader = DataLoader(cfg.train_data, cfg.batch_size, cfg.seq_len, shuffle=SHUFFLES[cfg.shuffle], seed=cfg.seed)
    batches = iter(loader.next_batch, None)   # the Trainer's order: the same seed and shuffle
    theirs, secs = train_torch.train(init, config, batches, n, lr=cfg.lr, warmup=cfg.warmup_steps,
                                     final_frac=cfg.final_lr_frac, weight_decay=cfg.weight_decay,
                                     grad_clip=cfg.grad_clip, model=model)
    return [summary[s] for s in range(n)], theirs, ours_s, secs, trainer.family.describe()


def compare_phase(args, data, out):
    """Phase 2, printed; 1 when a loss is not finite."""
    import numpy as np

    ref_dir = Path(__file__).resolve().parents[2] / "tests" / "reference"
    if not (ref_dir / "train_torch.py").is_file():
        print("PyTorch comparison skipped: tests/reference/train_torch.py is not in this checkout")
        return 0
    if str(ref_dir) not in sys.path:
        sys.path.insert(0, str(ref_dir))
    import train_torch

    ours, theirs, ours_s, secs, model = compare_losses(args, data, out, train_torch)
    n = len(ours)
    diffs = [abs(a - b) for a, b in zip(ours, theirs)]
    print(f"per-step train loss, llmpy vs PyTorch, same init and batches ({n} steps, {model}):")
    for s in range(n):
        print(f"  step {s:4d}: llmpy {ours[s]:.6f}  torch {theirs[s]:.6f}  |diff| {diffs[s]:.2e}")
    print(f"  max |diff| {max(diffs):.2e}, mean |diff| {sum(diffs) / n:.2e}, last {diffs[-1]:.2e}; "
          f"step time llmpy {ours_s * 1e3:.0f} ms, torch {np.median(secs) * 1e3:.0f} ms (load {_load()})")
    return 0 if math.isfinite(max(diffs)) else 1


def run(args):
    from llmpy.data.prepro import prepare_tinyshakespeare

    marks = parse_marks(args.minutes)
    data = prepare_tinyshakespeare(source=args.data, vocab_size=args.vocab_size if args.arch == "llama" else None)
    out = Path(args.output_dir or ("runs/bench_quality" if args.arch == "gpt2" else f"runs/bench_quality_{args.arch}"))
    print(f"load average at start: {_load()} (2-core machine shared with other work)")
    if not args.skip_train:
        train_phase(args, data, out, marks)
    if args.compare_steps:
        return compare_phase(args, data, out)
    return 0


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
