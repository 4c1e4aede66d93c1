"""llm.c's multiple-choice eval file (HellaSwag, MMLU style), written by data_common.write_evalfile.

Layout:
    header: 256 int32 (1024 bytes)
        [0] magic 20240522   [1] version 1   [2] number of examples
        [3] longest example, in bytes
    then per example a stream of uint16:
        65535 (example start), example length in bytes (this stream included), example index, label,
        number of completions (4), context length, context tokens,
        then per completion: its length, its tokens.

Token ids must be below 65535 (that value marks an example start), so only GPT-2-sized vocabularies fit.
An example is a dict {"label": int, "ctx_tokens": [int], "ending_tokens": [[int] * 4]}.
"""

from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.formats import sniff
from llmpy.formats.tokens import HEADER_BYTES, HEADER_INTS, atomic_write

EVAL_MAGIC = 20240522
EVAL_VERSION = 1
EXAMPLE_START = 2**16 - 1  # 65535, the delimiter before every example
NUM_COMPLETIONS = 4  # llm.c's EvalLoader assumes 4 (ASSUMED_NUM_COMPLETIONS)
UINT16_LIMIT = 2**16
HINT = "re-run `llmpy prepro hellaswag` to rewrite it"


def example_stream(index, example):
    """The uint16 stream of one example (see the module docstring)."""
    label, ctx, endings = int(example["label"]), list(example["ctx_tokens"]), example["ending_tokens"]
    if len(endings) != NUM_COMPLETIONS:
        raise LlmpyError(f"example {index} has {len(endings)} completions; the eval file holds exactly 4")
    if not 0 <= label < NUM_COMPLETIONS:
        raise LlmpyError(f"example {index} has label {label}; labels are 0..3")
    if not ctx or any(len(e) == 0 for e in endings):
        raise LlmpyError(f"example {index} has an empty context or completion; each needs at least one token")
    stream = [EXAMPLE_START, 0, index, label, NUM_COMPLETIONS, len(ctx), *ctx]
    for end in endings:
        stream += [len(end), *end]
    if any(not 0 <= t < EXAMPLE_START for t in [*ctx, *(t for e in endings for t in e)]):
        raise LlmpyError(f"example {index} has a token id outside 0..65534; the eval file stores uint16 "
                         "and reserves 65535")
    nbytes = 2 * len(stream)
    if nbytes >= UINT16_LIMIT:
        raise LlmpyError(f"example {index} is {nbytes} bytes; the eval file limits an example to 65535 bytes")
    stream[1] = nbytes
    return stream


def write_evalfile(path, examples):
    """Write the examples (dicts, see the module docstring) as llm.c's eval file."""
    if not 0 < len(examples) < UINT16_LIMIT:
        raise LlmpyError(f"{len(examples)} examples for {path}; the eval file holds 1..65535")
    streams = [example_stream(i, ex) for i, ex in enumerate(examples)]
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = EVAL_MAGIC, EVAL_VERSION, len(examples)
    header[3] = max(2 * len(s) for s in streams)
    body = np.concatenate([np.asarray(s, dtype="<u2") for s in streams])
    atomic_write(path, [header.tobytes(), body.tobytes()])


def read_evalfile(path, vocab_size=None):
    """The examples of an eval file, as dicts with "index", "label", "ctx_tokens", "ending_tokens".

    Every example is checked as write_evalfile checks it (label 0..3, a non-empty context and endings) and,
    given the model's vocab_size, every token id against it: a bad file is an LlmpyError, never scored.
    """
    path = Path(path)
    sniff.check_kind(path, ("evalfile",), "an llm.c eval file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LlmpyError(f"cannot read the eval file {path}: {e.strerror or e}; {HINT}") from e
    if len(data) < HEADER_BYTES or (len(data) - HEADER_BYTES) % 2:
        raise LlmpyError(f"{path} is {len(data)} bytes: truncated or not an eval file; {HINT}")
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4")
    if int(header[0]) != EVAL_MAGIC:
        raise LlmpyError(f"bad magic {int(header[0])} in {path}: not an llm.c eval file "
                         f"(expected {EVAL_MAGIC}); {HINT}")
    if int(header[1]) != EVAL_VERSION:
        raise LlmpyError(f"bad version {int(header[1])} in the eval file {path} (expected {EVAL_VERSION}); {HINT}")
    n = int(header[2])
    if not 0 < n < UINT16_LIMIT:
        raise LlmpyError(f"{path} says it holds {n} examples; an eval file holds 1..65535; {HINT}")
    s = np.frombuffer(data[HEADER_BYTES:], dtype="<u2")
    examples, pos = [], 0
    try:
        for i in range(n):
            if pos + 6 > len(s):
                raise ValueError(f"the file ends inside example {i}")
            start, nbytes, index, label, ncomp = (int(v) for v in s[pos:pos + 5])
            if start != EXAMPLE_START or index != i or ncomp != NUM_COMPLETIONS or nbytes % 2:
                raise ValueError(f"example {i} is malformed")
            if not 0 <= label < NUM_COMPLETIONS:
                raise ValueError(f"example {i} has label {label}; labels are 0..3")
            end = pos + nbytes // 2
            p = pos + 5
            n_ctx = int(s[p])
            ctx = s[p + 1:p + 1 + n_ctx].tolist()
            p += 1 + n_ctx
            endings = []
            for _ in range(ncomp):
                n_end = int(s[p]) if p < len(s) else 0
                endings.append(s[p + 1:p + 1 + n_end].tolist())
                p += 1 + n_end
            if p != end or end > len(s):
                raise ValueError(f"example {i} does not match its length field")
            if not ctx or not all(endings):
                raise ValueError(f"example {i} has an empty context or ending")
            examples.append({"index": index, "label": label, "ctx_tokens": ctx, "ending_tokens": endings})
            pos = end
    except (ValueError, IndexError) as e:
        raise LlmpyError(f"{path} is corrupt or truncated ({e}); {HINT}") from e
    if pos != len(s):
        raise LlmpyError(f"{path} has {len(s) - pos} uint16 values after its {n} examples; {HINT}")
    if vocab_size is not None:
        for ex in examples:
            top = max(max(ex["ctx_tokens"]), *(max(e) for e in ex["ending_tokens"]))
            if top >= vocab_size:
                raise LlmpyError(f"{path}: example {ex['index']} has token id {top}, outside the model's vocabulary "
                                 f"of {vocab_size}: the file was tokenized for another model; {HINT} with the "
                                 "model's tokenizer")
    return examples
