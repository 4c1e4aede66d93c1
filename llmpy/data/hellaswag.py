"""HellaSwag: download, tokenize into llm.c's eval file, and score a model on it (llm.c's protocol).

Each example is a context and 4 candidate endings; the model "chooses" the ending it finds most likely.
Completion style, as llm.c's dev/data/hellaswag.py and its C EvalLoader: every ending is appended to the
context (GPT-2 tokens of the context, then of " " + ending), the model's per-token cross-entropy is taken
over the ending's tokens only, and the prediction is the ending with the lowest loss:
    acc       lowest summed loss
    acc_norm  lowest mean loss (what llm.c's C reports and training logs)
Ties go to the first ending, as in llm.c. Four rows per example, B//4 examples per batch.

An example longer than T tokens (llm.c asserts they fit) loses context tokens from its start so that the
ending still fits; the result counts how many were cut. Ranks split the examples as llm.c's EvalLoader:
rank r of W takes examples [r*ceil(N/W), (r+1)*ceil(N/W)); add up the returned counts over ranks.
"""

import json
import math
from pathlib import Path

import numpy as np

from llmpy.data.download import check_jsonl
from llmpy.data.prepro import fetch, prepare_out_dir, say
from llmpy.errors import LlmpyError
from llmpy.formats.hellaswag import NUM_COMPLETIONS, read_evalfile, write_evalfile

HELLASWAG_URLS = {
    split: f"https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
    for split in ("train", "val", "test")
}
VAL_EXAMPLES = 10042  # the size of HellaSwag's validation split
EXAMPLE_KEYS = ("ctx", "endings", "label")  # what render_example reads from each line


def render_example(example, tok):
    """llm.c's eval-file dict for one HellaSwag json example: context tokens and " " + ending tokens."""
    return {
        "label": int(example["label"]),
        "ctx_tokens": tok.encode_ordinary(example["ctx"]),
        "ending_tokens": [tok.encode_ordinary(" " + end) for end in example["endings"]],
    }


def prepare_hellaswag(out_dir=None, split="val", source=None, force=False, verbose=True, vocab_dir=None):
    """Download HellaSwag's `split` and write hellaswag_{split}.bin (llm.c's eval file); returns its path."""
    from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer

    if split not in HELLASWAG_URLS:
        raise LlmpyError(f"unknown HellaSwag split {split!r}; use train, val or test")
    out_dir = prepare_out_dir("hellaswag", out_dir, False)
    out = out_dir / f"hellaswag_{split}.bin"
    if out.exists() and not force:
        say(verbose, f"{out} already exists, skipping (pass --force to redo)")
        return str(out)
    # no published checksum: the file must be JSON lines holding the keys an example needs
    path = fetch(HELLASWAG_URLS[split], out_dir, f"hellaswag_{split}.jsonl", None, source, verbose,
                 validate=check_jsonl(EXAMPLE_KEYS))
    tok = get_gpt2_tokenizer(vocab_dir)
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                examples.append(render_example(json.loads(line), tok))
            except (ValueError, KeyError, TypeError) as e:
                raise LlmpyError(f"{path} line {lineno} is not a HellaSwag example ({e}); delete the file to "
                                 "download it again") from e
    write_evalfile(out, examples)
    say(verbose, f"writing {len(examples):,} examples to {out}")
    return str(out)


def load_examples(path_or_examples, vocab_size=None):
    if isinstance(path_or_examples, (str, Path)):
        return read_evalfile(path_or_examples, vocab_size)
    return list(path_or_examples)


def make_batch(examples, B, T):
    """Pack examples, 4 rows each, into inputs/targets (B,T) int32, mask (B,T) bool and labels.

    Row 4*i+c holds the context of example i followed by its ending c; mask is True where the target is
    an ending token. Returns (inputs, targets, mask, labels, num_truncated).
    """
    inputs = np.zeros((B, T), dtype=np.int32)
    targets = np.zeros((B, T), dtype=np.int32)
    mask = np.zeros((B, T), dtype=bool)
    truncated = 0
    for i, ex in enumerate(examples):
        ctx = list(ex["ctx_tokens"])
        longest = max(len(e) for e in ex["ending_tokens"])
        if longest >= T:
            raise LlmpyError(f"HellaSwag example {ex.get('index', i)} has a {longest}-token ending, too long "
                             f"for T={T}; evaluate with a longer sequence length")
        if len(ctx) + longest > T:
            ctx = ctx[len(ctx) + longest - T:]  # keep the end of the context, next to the ending
            truncated += 1
        for c, end in enumerate(ex["ending_tokens"]):
            row = NUM_COMPLETIONS * i + c
            seq = ctx + list(end)
            inputs[row, :len(seq)] = seq
            # the last context token predicts the first ending token, and so on
            targets[row, len(ctx) - 1:len(seq) - 1] = end
            mask[row, len(ctx) - 1:len(seq) - 1] = True
    labels = np.array([ex["label"] for ex in examples], dtype=np.int64)
    return inputs, targets, mask, labels, truncated


def cross_entropy_losses(logits, targets):
    """Per-position cross-entropy, float32 (B,T), from logits (B,T,V) and targets (B,T)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(-1, keepdims=True)                               # (B,T,V)
    logsumexp = np.log(np.exp(shifted).sum(-1))                                    # (B,T)
    picked = np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]      # (B,T)
    return logsumexp - picked


def evaluate(examples, B, T, logits_fn=None, losses_fn=None, rank=0, world_size=1, vocab_size=None):
    """Score a model on HellaSwag examples (an eval file path or a list of example dicts).

    Give one of: logits_fn(inputs (B,T) int32) -> logits (B,T,V), or losses_fn(inputs, targets) -> per-token
    losses (B,T). B must be a multiple of 4. Returns {"acc", "acc_norm", "num_examples", "num_correct",
    "num_correct_norm", "num_truncated"} for this rank's share of the examples. vocab_size: the model's,
    to refuse an eval file whose token ids fall outside it.
    """
    if (logits_fn is None) == (losses_fn is None):
        raise ValueError("give exactly one of logits_fn or losses_fn")
    if B < NUM_COMPLETIONS or B % NUM_COMPLETIONS:
        raise LlmpyError(f"HellaSwag packs 4 rows per example: B={B} must be a positive multiple of 4")
    examples = load_examples(examples, vocab_size)
    per_rank = math.ceil(len(examples) / world_size)
    mine = examples[rank * per_rank:(rank + 1) * per_rank]
    per_batch = B // NUM_COMPLETIONS
    correct = correct_norm = truncated = 0
    for start in range(0, len(mine), per_batch):
        chunk = mine[start:start + per_batch]
        inputs, targets, mask, labels, cut = make_batch(chunk, B, T)
        truncated += cut
        if logits_fn is not None:
            losses = cross_entropy_losses(logits_fn(inputs), targets)
        else:
            losses = np.asarray(losses_fn(inputs, targets), dtype=np.float32)
        n = NUM_COMPLETIONS * len(chunk)
        sum_loss = (losses[:n] * mask[:n]).sum(-1, dtype=np.float64).reshape(len(chunk), NUM_COMPLETIONS)
        count = mask[:n].sum(-1).reshape(len(chunk), NUM_COMPLETIONS)
        correct += int((sum_loss.argmin(-1) == labels).sum())
        correct_norm += int(((sum_loss / count).argmin(-1) == labels).sum())
    total = len(mine)
    return {
        "acc": correct / total if total else 0.0,
        "acc_norm": correct_norm / total if total else 0.0,
        "num_examples": total,
        "num_correct": correct,
        "num_correct_norm": correct_norm,
        "num_truncated": truncated,
    }
