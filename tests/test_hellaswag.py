"""HellaSwag eval file (llm.c's write_evalfile layout) and the scorer, against a PyTorch float64 reference
of llm.c's dev/data/hellaswag.py protocol on a tiny synthetic example set."""

import json
import struct

import numpy as np
import pytest
import torch

from llmpy.data import hellaswag
from llmpy.errors import LlmpyError
from llmpy.formats.hellaswag import read_evalfile, write_evalfile

V = 11


def synthetic_examples(n, rng):
    out = []
    for _ in range(n):
        ctx = rng.integers(0, V, size=rng.integers(1, 6)).tolist()
        ends = [rng.integers(0, V, size=rng.integers(1, 4)).tolist() for _ in range(4)]
        out.append({"label": int(rng.integers(0, 4)), "ctx_tokens": ctx, "ending_tokens": ends})
    return out


def test_evalfile_bytes_and_round_trip(tmp_path):
    ex = [{"label": 2, "ctx_tokens": [5, 6], "ending_tokens": [[1], [2, 3], [4], [7, 8, 9]]}]
    path = tmp_path / "hs.bin"
    write_evalfile(path, ex)
    stream = [65535, 0, 0, 2, 4, 2, 5, 6, 1, 1, 2, 2, 3, 1, 4, 3, 7, 8, 9]
    stream[1] = 2 * len(stream)
    expected = struct.pack("<256i", 20240522, 1, 1, 2 * len(stream), *([0] * 252)) + struct.pack(
        f"<{len(stream)}H", *stream)
    assert path.read_bytes() == expected
    got = read_evalfile(path)
    assert got == [{"index": 0, **ex[0]}]
    (tmp_path / "cut.bin").write_bytes(expected[:-2])
    with pytest.raises(LlmpyError, match="cut.bin"):
        read_evalfile(tmp_path / "cut.bin")
    with pytest.raises(LlmpyError, match="65535"):
        write_evalfile(tmp_path / "x.bin", [{**ex[0], "ctx_tokens": [65535]}])
    assert not (tmp_path / "x.bin").exists()


def reference_scores(examples, logits_table):
    """llm.c's hellaswag.py, one example at a time, in float64 with torch."""
    correct = correct_norm = 0
    for ex in examples:
        rows = [ex["ctx_tokens"] + e for e in ex["ending_tokens"]]
        sums, means = [], []
        for row, end in zip(rows, ex["ending_tokens"]):
            toks = torch.tensor(row)
            logits = torch.tensor(logits_table, dtype=torch.float64)[toks[:-1]]  # bigram model
            losses = torch.nn.functional.cross_entropy(logits, toks[1:], reduction="none")
            tail = losses[-len(end):]
            sums.append(tail.sum().item())
            means.append(tail.mean().item())
        correct += int(np.argmin(sums) == ex["label"])
        correct_norm += int(np.argmin(means) == ex["label"])
    return correct, correct_norm


@pytest.mark.parametrize("B", [4, 12])
def test_scorer_matches_reference(tmp_path, B):
    rng = np.random.default_rng(0)
    examples = synthetic_examples(23, rng)
    table = rng.standard_normal((V, V)).astype(np.float32) * 3  # a bigram "model": logits of the next token
    write_evalfile(tmp_path / "hs.bin", examples)

    def logits_fn(inputs):
        return table[inputs]  # (B,T,V)

    def losses_fn(inputs, targets):
        return hellaswag.cross_entropy_losses(table[inputs], targets)

    want_correct, want_norm = reference_scores(examples, table)
    assert want_correct != want_norm or want_correct > 0  # the reference distinguishes something
    for kwargs in ({"logits_fn": logits_fn}, {"losses_fn": losses_fn}):
        res = hellaswag.evaluate(tmp_path / "hs.bin", B, 16, **kwargs)
        assert res["num_examples"] == 23 and res["num_truncated"] == 0
        assert res["num_correct"] == want_correct
        assert res["num_correct_norm"] == want_norm
        assert res["acc_norm"] == pytest.approx(want_norm / 23)
    # ranks split the examples and their counts add up
    parts = [hellaswag.evaluate(examples, B, 16, logits_fn=logits_fn, rank=r, world_size=3) for r in range(3)]
    assert sum(p["num_examples"] for p in parts) == 23
    assert sum(p["num_correct_norm"] for p in parts) == want_norm


def test_perfect_model_and_truncation():
    examples = [{"label": 1, "ctx_tokens": [1, 2, 3, 4, 5], "ending_tokens": [[7], [6], [8], [9]]}]
    # a model that always predicts "previous token + 1" strongly: ending [6] after context ...5 wins
    table = np.full((V, V), -5.0, dtype=np.float32)
    table[np.arange(V - 1), np.arange(1, V)] = 5.0
    res = hellaswag.evaluate(examples, 4, 3, logits_fn=lambda x: table[x])
    assert res["acc"] == 1.0 and res["acc_norm"] == 1.0 and res["num_truncated"] == 1
    with pytest.raises(LlmpyError, match="multiple of 4"):
        hellaswag.evaluate(examples, 6, 8, logits_fn=lambda x: table[x])


def test_prepare_from_local_jsonl(tmp_path):
    lines = [
        {"ctx": "A man is sitting on a roof. he", "label": 3,
         "endings": ["is using wrap.", "is ripping tiles.", "is holding a cube.", "starts pulling up roofing."]},
        {"ctx": "Cats", "label": 0, "endings": ["purr.", "bark.", "fly.", "swim."]},
    ]
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = hellaswag.prepare_hellaswag(tmp_path / "out", source=src, verbose=False)
    got = read_evalfile(out)
    from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer

    enc = get_gpt2_tokenizer()
    assert got[0]["ctx_tokens"] == enc.encode(lines[0]["ctx"])
    assert got[0]["ending_tokens"][3] == enc.encode(" starts pulling up roofing.")
    assert [g["label"] for g in got] == [3, 0]
