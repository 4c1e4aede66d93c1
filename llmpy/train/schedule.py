"""Learning-rate schedules, llm.c's llmc/schedulers.h.

Every schedule warms up linearly over the first `warmup` steps (lr * (step + 1) / warmup), then:
    cosine    min_lr + 0.5 * (1 + cos(pi * r)) * (lr - min_lr),  r = (step - warmup) / (max_steps - warmup)
    linear    lr - r * (lr - min_lr)
    constant  lr
    wsd       warmup-stable-decay: lr until 80% of the steps, then min_lr + (1 - sqrt(r)) * (lr - min_lr)
              with r = (step - decay_point) / (max_steps - decay_point), decay_point = int(0.8 * max_steps)
where min_lr = lr * final_frac. Difference from llm.c: its `constant` ignores the warmup; here it warms up too
(pass warmup 0 for llm.c's behaviour).
"""

import math

from llmpy.errors import LlmpyError

SCHEDULES = ("cosine", "linear", "constant", "wsd")
WSD_DECAY_START = 0.8  # wsd keeps lr constant for the first 80% of the steps


def check_schedule(name, lr, warmup, max_steps, final_frac):
    if name not in SCHEDULES:
        raise LlmpyError(f"unknown lr schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    if not lr > 0.0:
        raise LlmpyError(f"learning rate must be > 0, got {lr}")
    if warmup < 0:
        raise LlmpyError(f"warmup steps must be >= 0, got {warmup}")
    if not 0.0 <= final_frac <= 1.0:
        raise LlmpyError(f"final lr fraction (-q) must be in [0, 1], got {final_frac}")
    if name in ("cosine", "linear") and warmup > max_steps:
        raise LlmpyError(f"warmup ({warmup} steps) is longer than the run ({max_steps} steps); lower -u or raise -x")


def learning_rate(name, step, lr, warmup, max_steps, final_frac):
    """The learning rate of training step `step` (0-based) of `max_steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    min_lr = lr * final_frac
    if name == "constant":
        return lr
    if name == "wsd":
        decay_point = int(WSD_DECAY_START * max_steps)
        if step < decay_point:
            return lr
        r = min(1.0, (step - decay_point) / max(1, max_steps - decay_point))
        return min_lr + (1.0 - math.sqrt(r)) * (lr - min_lr)
    r = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if name == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (lr - min_lr)
    if name == "linear":
        return lr - r * (lr - min_lr)
    raise LlmpyError(f"unknown lr schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
