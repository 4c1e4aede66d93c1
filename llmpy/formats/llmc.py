"""llm.c's GPT-2 files: model checkpoints and the PyTorch debug state.

Both start with a header of 256 int32 (1024 bytes):
- model checkpoint: [MODEL_MAGIC, version, maxT, V, L, NH, C, Vp, 0...], then the 16 parameter
  tensors in llm.c's order (llmpy.gpt2.model.param_shapes), fp32 for version 3, bf16 for version 5;
- debug state (written by llm.c's train_gpt2.py for test_gpt2): [STATE_MAGIC, 2, B, T, 0...],
  then x and y int32 (B,T), the logits fp32 (B,T,V) unpadded, the loss fp32, and the gradients of
  all parameters fp32 in the same layout as the model (wte padded to Vp).

Both are read into memory with np.fromfile, not memory-mapped: a file replaced or truncated later cannot
disturb a run that loaded it. Every reader rejects, with an LlmpyError, a file of another kind (saying what
it is, llmpy.formats.sniff), a directory, a header whose sizes do not match the file's length, and
non-finite values (load_checkpoint(..., allow_nonfinite=True) loads them with a warning).

What this module does not handle: the optimizer/loader state files of llm.c's CUDA trainer (see
llmpy.formats.train_state), and versions 1, 2 and 4 of the checkpoint (never released by llm.c).
"""

import math
import os
from dataclasses import dataclass

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write
from llmpy.formats import sniff
from llmpy.formats.finite import check_finite
from llmpy.gpt2.model import GPT2Config, num_parameters, param_shapes

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MODEL_MAGIC = 20240326
MODEL_VERSION_FP32 = 3
MODEL_VERSION_BF16 = 5
STATE_MAGIC = 20240327
STATE_VERSION = 2

MODEL_HINT = ("write a valid one with `llmpy train` (it saves llm.c checkpoints) or with llm.c's "
              "train_gpt2.py (gpt2_124M.bin)")
STATE_HINT = "write a valid one with llm.c's train_gpt2.py (gpt2_124M_debug_state.bin) or tests/reference"


def _read_header(path, magic, kind, what, hint):
    sniff.check_kind(path, (kind,), f"an llm.c {what}")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise LlmpyError(f"cannot read {what} {path}: {e.strerror}") from None
    if size < HEADER_BYTES:
        raise LlmpyError(f"{path} is not an llm.c {what}: {size} bytes, shorter than the {HEADER_BYTES}-byte "
                         f"header. ---> HINT: {hint}")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != magic:
        raise LlmpyError(f"{path} is not an llm.c {what}: magic {header[0]}, expected {magic}. ---> HINT: {hint}")
    return header, size


def _check_size(path, size, expected, what, hint):
    if size != expected:
        kind = "truncated" if size < expected else "longer than its header says"
        raise LlmpyError(f"{path}: {what} is {kind}: {size} bytes, the header implies {expected}. ---> HINT: {hint}")


def _config_from_header(path, header):
    maxT, V, L, NH, C, Vp = (int(x) for x in header[2:8])
    try:
        return GPT2Config(max_seq_len=maxT, vocab_size=V, padded_vocab_size=Vp, num_layers=L, num_heads=NH,
                          channels=C)
    except ValueError as e:
        raise LlmpyError(f"{path}: the header's model sizes are invalid ({e}). ---> HINT: {MODEL_HINT}") from None


# ----------------------------------------------------------------------------
# bfloat16 <-> float32

def bf16_to_fp32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact: bf16 is the top half of an fp32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def fp32_to_bf16(x):
    """float32 -> uint16 bfloat16 bit patterns, rounding to nearest even (as PyTorch does); NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)  # keep it a (quiet) NaN
    return rounded


# ----------------------------------------------------------------------------
# model checkpoints

def model_header(config, version):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = [MODEL_MAGIC, version, config.max_seq_len, config.vocab_size, config.num_layers,
                  config.num_heads, config.channels, config.padded_vocab_size]
    return header


def load_checkpoint(path, allow_nonfinite=False):
    """Read an llm.c GPT-2 checkpoint: (GPT2Config, flat float32 params). bf16 files are widened.

    The parameters are read into memory (not mapped), and must all be finite unless allow_nonfinite.
    """
    header, size = _read_header(path, MODEL_MAGIC, "llmc_model", "model checkpoint", MODEL_HINT)
    version = int(header[1])
    if version not in (MODEL_VERSION_FP32, MODEL_VERSION_BF16):
        raise LlmpyError(f"{path}: unsupported checkpoint version {version} (this reads {MODEL_VERSION_FP32} = fp32 "
                         f"and {MODEL_VERSION_BF16} = bf16). ---> HINT: {MODEL_HINT}")
    config = _config_from_header(path, header)
    n = num_parameters(config)
    itemsize = 4 if version == MODEL_VERSION_FP32 else 2
    _check_size(path, size, HEADER_BYTES + n * itemsize, "the checkpoint", MODEL_HINT)
    if version == MODEL_VERSION_FP32:
        params = np.fromfile(path, dtype="<f4", count=n, offset=HEADER_BYTES).astype(np.float32, copy=False)
    else:
        params = bf16_to_fp32(np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES))
    if params.size != n:  # the file shrank since its size was taken
        raise LlmpyError(f"{path}: the checkpoint changed while it was read; read it again once it is written")
    check_finite(path, named_tensors(config, params), allow_nonfinite, MODEL_HINT)
    return config, params


def named_tensors(config, params):
    """{name: view} of flat params, llm.c's 16 tensors (for messages that name the tensor)."""
    shapes = param_shapes(config)
    ends = np.cumsum([math.prod(s) for s in shapes.values()])
    return {name: params[end - math.prod(shape):end].reshape(shape) for (name, shape), end in zip(shapes.items(), ends)}


def save_checkpoint(path, config, params, dtype="float32"):
    """Write an llm.c GPT-2 checkpoint (version 3 for float32, 5 for bfloat16).

    Written to a temporary name and renamed, so a crash never leaves a half file under `path`."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    params = np.asarray(params)
    n = num_parameters(config)
    assert params.shape == (n,), f"params must be flat with {n} elements, got {params.shape}"
    version = MODEL_VERSION_FP32 if dtype == "float32" else MODEL_VERSION_BF16
    payload = params.astype("<f4", copy=False) if dtype == "float32" else fp32_to_bf16(params).astype("<u2")
    atomic_write(path, [model_header(config, version), np.ascontiguousarray(payload)])


# ----------------------------------------------------------------------------
# debug state (llm.c's test_gpt2 reference)

@dataclass
class DebugState:
    x: np.ndarray        # (B,T) int32 inputs
    y: np.ndarray        # (B,T) int32 targets
    logits: np.ndarray   # (B,T,V) float32, unpadded
    loss: float
    grads: np.ndarray    # flat float32, the model's layout (wte padded to Vp)


def load_debug_state(path, config):
    """Read llm.c's debug state for a model of `config` (the checkpoint's)."""
    header, size = _read_header(path, STATE_MAGIC, "llmc_state", "debug state", STATE_HINT)
    if int(header[1]) != STATE_VERSION:
        raise LlmpyError(f"{path}: unsupported debug state version {int(header[1])} (this reads {STATE_VERSION}). "
                         f"---> HINT: {STATE_HINT}")
    B, T = int(header[2]), int(header[3])
    if B <= 0 or T <= 0:
        raise LlmpyError(f"{path}: invalid batch size B={B}, T={T} in the header. ---> HINT: {STATE_HINT}")
    if T > config.max_seq_len:
        raise LlmpyError(f"{path}: T={T} exceeds the model's max_seq_len {config.max_seq_len}: "
                         "the state and the model do not belong together")
    V, n = config.vocab_size, num_parameters(config)
    expected = HEADER_BYTES + 4 * (2 * B * T + B * T * V + 1 + n)
    _check_size(path, size, expected, "the debug state (for this model's sizes)", STATE_HINT)
    data = np.fromfile(path, dtype="<i4", offset=HEADER_BYTES)
    if data.size * 4 != expected - HEADER_BYTES:
        raise LlmpyError(f"{path}: the debug state changed while it was read; read it again once it is written")
    x = data[:B * T].reshape(B, T).astype(np.int32)
    y = data[B * T:2 * B * T].reshape(B, T).astype(np.int32)
    floats = data[2 * B * T:].view("<f4").astype(np.float32)
    logits = floats[:B * T * V].reshape(B, T, V)
    loss = float(floats[B * T * V])
    grads = floats[B * T * V + 1:]
    for name, tokens in (("x", x), ("y", y)):
        if tokens.min() < 0 or tokens.max() >= V:
            raise LlmpyError(f"{path}: {name} has token ids outside [0, {V}): the state and the model do not "
                             "belong together")
    check_finite(path, {"logits": logits, "loss": floats[B * T * V:B * T * V + 1], "grads": grads}, hint=STATE_HINT)
    return DebugState(x=x, y=y, logits=logits, loss=loss, grads=grads)
