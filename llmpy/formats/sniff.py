"""What kind of file is this? Every file format llmpy knows, told apart by its first bytes.

A reader handed the wrong kind of file says what the file is and which command takes it, instead of
calling it corrupt: a GPT-2 checkpoint given to `llmpy run`, a model given as its `-z` tokenizer, llm.c's
tokenizer file given where llama2.c's tokenizer.bin belongs. Each reader calls `check_kind` first; it
reads the first 1024 bytes and the size, and raises LlmpyError for a directory or for a file that is
recognisably another kind. A file of no known kind passes: the reader's own checks then explain.

Recognised (magic numbers and versions are the format modules' constants):
    llm.c GPT-2 checkpoint 20240326, debug state 20240327, tokenizer file 20240328, token shard
    20240520 / 20240801, eval file 20240522; llmpy's Llama debug state 20260416; llama2.c model v1/v2
    ("ak42"), v0 (no magic: seven header ints that describe exactly the file's size); llama2.c tokenizer.bin
    (no magic: a small max_token_length, then score/length/bytes records that parse); safetensors (a header length that
    fits, then "{"); NumPy .npz (a zip archive: llmpy's training state).
The two headerless llama2.c kinds are recognised by plausibility only; a file that merely resembles
them is called "probably" one.
"""

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from llmpy.errors import LlmpyError

HEAD_BYTES = 1024
ZIP_MAGIC = b"PK\x03\x04"
TOKENIZER_MAX_PIECE = 1024  # a llama2.c tokenizer's max_token_length is tens of bytes
TOKENIZER_RECORDS = 3  # records a head must parse to look like a llama2.c tokenizer.bin


@dataclass(frozen=True)
class Kind:
    key: str  # "llmc_model", "llama2c", ... (see KINDS)
    what: str  # "an llm.c GPT-2 checkpoint"
    use: str  # which command takes it

    def __str__(self):
        return f"{self.what} ({self.use})"


KINDS = {k.key: k for k in (
    Kind("directory", "a directory", "give the file itself, not the directory that holds it"),
    Kind("llmc_model", "an llm.c GPT-2 checkpoint",
         "`llmpy sample`, `llmpy train -e`, `llmpy test-gpt2 --model` and `llmpy export --to hf` take it"),
    Kind("llmc_state", "an llm.c debug state (PyTorch's reference tensors)", "`llmpy test-gpt2 --state` takes it"),
    Kind("llama_state", "a Llama debug state (PyTorch's reference tensors)", "`llmpy test-llama --state` takes it"),
    Kind("llmc_tokenizer", "an llm.c GPT-2 tokenizer file (gpt2_tokenizer.bin, written by `llmpy prepro`)",
         "llm.c's C programs decode with it; `llmpy run -z` needs llama2.c's tokenizer.bin instead"),
    Kind("shard", "an llm.c token shard", "`llmpy train -i/-j` reads it as training or validation data"),
    Kind("evalfile", "an llm.c HellaSwag eval file", "`llmpy train -h 1 --hellaswag-file` takes it"),
    Kind("llama2c", "a llama2.c model", "`llmpy run` and `llmpy export` take it"),
    Kind("llama2c_tokenizer", "probably a llama2.c tokenizer.bin", "`llmpy run -z` takes it"),
    Kind("safetensors", "a safetensors file (Hugging Face weights)",
         "for GPT-2, `llmpy sample DIR` takes the directory holding model.safetensors and config.json"),
    Kind("npz", "a zip archive such as a NumPy .npz (llmpy's training state)",
         "`llmpy train -y 1 -o RUN_DIR` resumes from the run directory that holds it"),
)}


def identify(head, size):
    """The Kind of a file from its first bytes `head` (up to 1024) and its size, or None if unknown."""
    # imported here, not at the top: every format module imports this one
    from llmpy.formats import hellaswag, llama2c, llama_debug, llmc, tokenizer_file, tokens

    # (magic, version) of the formats with a magic number: a known magic with an unknown version is left to
    # the reader, whose message about the version is the more useful one
    by_magic = {(llmc.MODEL_MAGIC, llmc.MODEL_VERSION_FP32): "llmc_model",
                (llmc.MODEL_MAGIC, llmc.MODEL_VERSION_BF16): "llmc_model",
                (llmc.STATE_MAGIC, llmc.STATE_VERSION): "llmc_state",
                (llama_debug.STATE_MAGIC, llama_debug.STATE_VERSION): "llama_state",
                (tokenizer_file.TOKENIZER_MAGIC, tokenizer_file.VERSION_GPT2): "llmc_tokenizer",
                (tokenizer_file.TOKENIZER_MAGIC, tokenizer_file.VERSION_WITH_EOT): "llmc_tokenizer",
                (tokens.MAGIC_UINT16, tokens.VERSION_UINT16): "shard",
                (tokens.MAGIC_UINT32, tokens.VERSION_UINT32): "shard",
                (hellaswag.EVAL_MAGIC, hellaswag.EVAL_VERSION): "evalfile"}
    if len(head) >= 8:
        magic, version = struct.unpack_from("<ii", head)
        if (magic, version) in by_magic:
            return KINDS[by_magic[magic, version]]
        if struct.unpack_from("<I", head)[0] == llama2c.MAGIC and version in (1, 2):
            return KINDS["llama2c"]
    if head.startswith(ZIP_MAGIC):
        return KINDS["npz"]
    if len(head) >= 9:
        (n,) = struct.unpack_from("<Q", head)
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return KINDS["safetensors"]
    if _is_llama2c_v0(head, size):
        return KINDS["llama2c"]
    if _is_llama2c_tokenizer(head, size):
        return KINDS["llama2c_tokenizer"]
    return None


def _is_llama2c_v0(head, size):
    from llmpy.formats import llama2c

    if len(head) < llama2c.V0_HEADER.size:
        return False
    ints = list(llama2c.V0_HEADER.unpack_from(head))
    shared, ints[5] = ints[5] > 0, abs(ints[5])
    try:
        config = llama2c.config_from_ints(ints, shared, "")
        return size == llama2c.file_bytes(config, 0)
    except LlmpyError:
        return False


def _is_llama2c_tokenizer(head, size):
    if len(head) < 4:
        return False
    (max_len,) = struct.unpack_from("<i", head)
    if not 0 < max_len <= TOKENIZER_MAX_PIECE:
        return False
    pos = 4
    for _ in range(TOKENIZER_RECORDS):
        if pos == size:  # a tiny vocabulary, parsed to its end
            return True
        if pos + 8 > len(head):
            return False
        score, n = struct.unpack_from("<fi", head, pos)
        normal = score == 0.0 or (math.isfinite(score) and 1e-30 < abs(score) < 1e30)
        if not normal or not 0 <= n <= max_len or pos + 8 + n > size:
            return False
        pos += 8 + n
    return True


def identify_path(path):
    """The Kind of the file at `path` (KINDS["directory"] for a directory), or None if unknown or unreadable."""
    path = Path(path)
    try:
        if path.is_dir():
            return KINDS["directory"]
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return None
    return identify(head, size)


def describe(path):
    """"an llm.c GPT-2 checkpoint (`llmpy sample`, ... take it)" for the file at path, or None if unknown."""
    kind = identify_path(path)
    return None if kind is None else str(kind)


def check_kind(path, expected, wanted):
    """Raise LlmpyError if `path` is a directory or a known kind other than those in `expected` (KINDS keys).

    wanted: what the caller reads, for the message ("a llama2.c model").
    """
    kind = identify_path(path)
    if kind is not None and kind.key not in expected:
        raise LlmpyError(f"{path} is {kind.what}, not {wanted}: {kind.use}")
