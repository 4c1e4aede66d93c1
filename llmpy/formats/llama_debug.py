"""The Llama debug state: what a PyTorch reference computed for one batch, for `llmpy test-llama` (the Llama
counterpart of llm.c's GPT-2 debug state in llmpy.formats.llmc).

Layout, all little-endian:

    int32 header[256]
        [0]  STATE_MAGIC (20260416)
        [1]  STATE_VERSION (1)
        [2]  B, [3] T                  the batch: B sequences of T tokens (T <= seq_len)
        [4]  vocab_size V
        [5]  dim, [6] hidden_dim, [7] n_layers, [8] n_heads, [9] n_kv_heads, [10] seq_len,
        [11] shared_classifier (1 or 0)   the model's sizes, as in its llama2.c file: checked against it
        [12] n_params                  stored parameters (llmpy.llama.train_model.num_parameters)
        [13] n_steps                   AdamW steps whose losses follow the gradients (0 for none)
        [14] rope_theta, [15] norm_eps as float32 bit patterns (llama2.c files cannot store them)
        [16..255] zero
    int32   inputs  (B,T)
    int32   targets (B,T)
    float32 logits  (B,T,V)
    float32 loss                      mean cross-entropy of the logits against the targets
    float32 grads   (n_params)        d(loss)/d(every parameter), in llama2.c's v0 order (param_shapes)
    float32 losses  (n_steps)         the loss before each of n_steps AdamW steps on this batch

The AdamW hyperparameters of those steps are not stored: they are `llmpy test-llama`'s (TRAIN_* below),
which the reference (tests/reference/make_llama_fixtures.py) uses too.

What this does not handle: other dtypes than float32, Llamas with anything llama2.c files cannot describe
besides rope_theta and norm_eps (biases, a padded vocabulary).
"""

from dataclasses import dataclass

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write, read_head
from llmpy.formats import sniff
from llmpy.formats.finite import check_finite

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
STATE_MAGIC = 20260416
STATE_VERSION = 1
CONFIG_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "seq_len")  # header[5:11]
# the AdamW run whose losses the state holds: llama2.c train.py's betas, weight decay on the 2-D weights only
TRAIN_LR, TRAIN_BETA1, TRAIN_BETA2, TRAIN_EPS, TRAIN_WEIGHT_DECAY = 1e-3, 0.9, 0.95, 1e-8, 0.1
HINT = "write one with tests/reference/make_llama_fixtures.py (PyTorch) for this model file"


@dataclass
class LlamaDebugState:
    x: np.ndarray        # (B,T) int32 inputs
    y: np.ndarray        # (B,T) int32 targets
    logits: np.ndarray   # (B,T,V) float32
    loss: float
    grads: np.ndarray    # (n_params,) float32, llama2.c's v0 order
    losses: np.ndarray   # (n_steps,) float32
    rope_theta: float
    norm_eps: float


def _f32_bits(x):
    return int(np.array([x], dtype="<f4").view("<i4")[0])


def _f32_from_bits(i):
    return float(np.array([i], dtype="<i4").view("<f4")[0])


def state_header(config, B, T, n_params, n_steps):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:16] = [STATE_MAGIC, STATE_VERSION, B, T, config.vocab_size,
                   *(getattr(config, name) for name in CONFIG_FIELDS), int(config.shared_classifier), n_params,
                   n_steps, _f32_bits(config.rope_theta), _f32_bits(config.norm_eps)]
    return header


def save_llama_debug_state(path, config, x, y, logits, loss, grads, losses=()):
    """Write a debug state atomically (llmpy.fileio); arrays are converted to int32 / float32."""
    x, y = np.asarray(x), np.asarray(y)
    B, T = x.shape
    grads, losses = np.asarray(grads).reshape(-1), np.asarray(losses).reshape(-1)
    assert y.shape == (B, T) and np.shape(logits) == (B, T, config.vocab_size), "inputs/targets/logits shapes"
    chunks = [state_header(config, B, T, grads.size, losses.size), x.astype("<i4"), y.astype("<i4"),
              np.asarray(logits, dtype="<f4"), np.array([loss], dtype="<f4"), grads.astype("<f4"),
              losses.astype("<f4")]
    atomic_write(path, [np.ascontiguousarray(c) for c in chunks])


def load_llama_debug_state(path, config, n_params):
    """Read the debug state at `path` for the model `config` (its llama2.c file's) with n_params parameters.

    LlmpyError, naming the file, for: another kind of file, a wrong magic or version, a header whose sizes do
    not match the model's (the state belongs to another model), a file shorter or longer than its header says,
    token ids outside the vocabulary, non-finite values."""
    sniff.check_kind(path, ("llama_state",), "a Llama debug state")
    raw, size = read_head(path, HEADER_BYTES, "Llama debug state")
    if size < HEADER_BYTES:
        raise LlmpyError(f"{path} is not a Llama debug state: {size} bytes, shorter than the {HEADER_BYTES}-byte "
                         f"header. ---> HINT: {HINT}")
    h = np.frombuffer(raw, dtype="<i4")
    if h[0] != STATE_MAGIC:
        raise LlmpyError(f"{path} is not a Llama debug state: magic {int(h[0])}, expected {STATE_MAGIC}. "
                         f"---> HINT: {HINT}")
    if h[1] != STATE_VERSION:
        raise LlmpyError(f"{path}: unsupported Llama debug state version {int(h[1])} (this reads {STATE_VERSION}). "
                         f"---> HINT: {HINT}")
    B, T, V, n_steps = int(h[2]), int(h[3]), int(h[4]), int(h[13])
    stored = dict(zip(("vocab_size",) + CONFIG_FIELDS + ("shared_classifier", "n_params"), (int(v) for v in h[4:13])))
    expected = {"vocab_size": config.vocab_size, **{k: getattr(config, k) for k in CONFIG_FIELDS},
                "shared_classifier": int(config.shared_classifier), "n_params": n_params}
    mismatch = [f"{k} {stored[k]} (model {expected[k]})" for k in expected if stored[k] != expected[k]]
    if mismatch:
        raise LlmpyError(f"{path}: the state was written for another model: {', '.join(mismatch)}. ---> HINT: pass "
                         "the model file the state was made from, or write a state for this model")
    if B <= 0 or T <= 0 or T > config.seq_len or n_steps < 0:
        raise LlmpyError(f"{path}: invalid B={B}, T={T} (seq_len {config.seq_len}) or n_steps={n_steps} in the "
                         f"header. ---> HINT: {HINT}")
    rope_theta, norm_eps = _f32_from_bits(h[14]), _f32_from_bits(h[15])
    if not (rope_theta > 0 and norm_eps > 0 and np.isfinite(rope_theta) and np.isfinite(norm_eps)):
        raise LlmpyError(f"{path}: rope_theta {rope_theta} and norm_eps {norm_eps} must be positive and finite. "
                         f"---> HINT: {HINT}")
    want = file_bytes(B, T, V, n_params, n_steps)
    if size != want:
        kind = "truncated" if size < want else "longer than its header says"
        raise LlmpyError(f"{path}: the Llama debug state is {kind}: {size} bytes, the header implies {want}. "
                         f"---> HINT: {HINT}")
    data = np.fromfile(path, dtype="<i4", offset=HEADER_BYTES)
    if data.size * 4 != want - HEADER_BYTES:
        raise LlmpyError(f"{path}: the debug state changed while it was read; read it again once it is written")
    x = data[:B * T].reshape(B, T).astype(np.int32)
    y = data[B * T:2 * B * T].reshape(B, T).astype(np.int32)
    for name, tokens in (("inputs", x), ("targets", y)):
        if tokens.min() < 0 or tokens.max() >= V:
            raise LlmpyError(f"{path}: the {name} hold token ids outside [0, {V}): the file is corrupt. "
                             f"---> HINT: {HINT}")
    floats = data[2 * B * T:].view("<f4").astype(np.float32)
    n_logits = B * T * V
    logits, loss = floats[:n_logits].reshape(B, T, V), floats[n_logits:n_logits + 1]
    grads = floats[n_logits + 1:n_logits + 1 + n_params]
    losses = floats[n_logits + 1 + n_params:]
    check_finite(path, {"logits": logits, "loss": loss, "grads": grads, "losses": losses}, hint=HINT)
    return LlamaDebugState(x=x, y=y, logits=logits, loss=float(loss[0]), grads=grads, losses=losses,
                           rope_theta=rope_theta, norm_eps=norm_eps)


def file_bytes(B, T, V, n_params, n_steps):
    """The size of a debug state with these sizes."""
    return HEADER_BYTES + 4 * (2 * B * T + B * T * V + 1 + n_params + n_steps)

