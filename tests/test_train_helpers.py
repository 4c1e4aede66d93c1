"""Shared pieces of the training tests (no tests here): a tiny corpus, a tiny TrainConfig, `llmpy train` on
them, a run stopped by Ctrl-C."""

import io
import os
import signal

import numpy as np

from llmpy.cli import main
from llmpy.formats.tokens import write_shard
from llmpy.train.config import TrainConfig
from llmpy.train.loop import Trainer

V = 64


def write_corpus(tmp_path, n_train=6000, n_val=1200, seed=0):
    """A learnable token stream: a noisy cycle through the vocabulary (next token = previous + 1 mostly)."""
    rng = np.random.default_rng(seed)

    def stream(n):
        toks = np.empty(n, dtype=np.int64)
        toks[0] = 0
        for i in range(1, n):
            toks[i] = (toks[i - 1] + 1) % V if rng.random() < 0.8 else rng.integers(0, V)
        return toks

    train, val = tmp_path / "tiny_train.bin", tmp_path / "tiny_val.bin"
    write_shard(train, stream(n_train), vocab_size=V)
    write_shard(val, stream(n_val), vocab_size=V)
    return str(train), str(val)


def tiny_config(tmp_path, out="run", **overrides):
    train, val = write_corpus(tmp_path)
    values = {"train_data": train, "val_data": val, "num_layers": 2, "channels": 32, "num_heads": 2,
              "max_seq_len": 32, "vocab_size": V, "batch_size": 4, "seq_len": 16, "max_steps": 10, "lr": 1e-2,
              "warmup_steps": 2, "final_lr_frac": 0.1, "weight_decay": 0.1, "val_every": 4, "val_max_steps": 3,
              "gen_tokens": 8, "output_dir": str(tmp_path / out), "progress": "none", "plot": False}
    values.update(overrides)
    return TrainConfig(**values)


def train_cli(tmp_path, *flags, out="cli"):
    """(exit status, output directory) of `llmpy train` on the tiny corpus, tiny_config's model, 2 steps; flags
    come last, so they override the defaults here."""
    train, val = write_corpus(tmp_path)
    argv = ["train", "-i", train, "-j", val, "--layers", "2", "--channels", "32", "--heads", "2", "--max-seq-len",
            "32", "--vocab-size", str(V), "-b", "4", "-t", "16", "-x", "2", "-o", str(tmp_path / out), "--progress",
            "none", "--no-plot", *flags]
    return main(argv), tmp_path / out


def run_interrupted(cfg, after_step):
    """Run a Trainer on cfg and press Ctrl-C (SIGINT) as step `after_step` finishes; returns the run's summary."""
    trainer = Trainer(cfg, stream=io.StringIO())
    real_step = trainer.train_step

    def step_and_interrupt(step):
        out = real_step(step)
        if step == after_step:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the step finishes, a checkpoint is written
        return out

    trainer.train_step = step_and_interrupt
    return trainer.run()
