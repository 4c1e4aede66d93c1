"""llama2.c model files (.bin): read memory-mapped, and write, in versions v0, v1 and v2.

v0 (legacy, what run.c reads): 7 int32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads,
    vocab_size, seq_len` (vocab_size < 0 means an unshared classifier), then fp32 tok_emb, rms_att,
    wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, the RoPE tables freq_cis_real and freq_cis_imag
    (seq_len * head_size / 2 floats each, ignored on read), and wcls if unshared.
v1: a 256-byte header: uint32 magic "ak42", int32 version 1, the 7 int32, uint8 shared_classifier,
    zero padding; then fp32 rms_att, rms_ffn, rms_final, tok_emb, wq, wk, wv, wo, w1, w2, w3, [wcls].
v2 (what runq.c reads): header as v1 with version 2 and an int32 group_size after the flag; fp32
    rms_att, rms_ffn, rms_final; then Q8_0 tensors, each as its int8 values followed by its fp32
    scales: tok_emb, wq[0..L-1], wk[..], wv[..], wo[..], w1[..], w2[..], w3[..], [wcls].

Reading checks, with an LlmpyError: the kind of file (another llmpy format is named, llmpy.formats.sniff),
the header's sizes against the file's length, the seq_len against the memory it makes inference allocate
(check_context: v1/v2 files store nothing of size seq_len), and that every fp32 weight and Q8_0 scale is
finite (allow_nonfinite=True loads such a file with a warning).

Memory mapping: read_llama2c returns views into a read-only map of the file, which the caller reads once
(export) or copies (inference.Transformer packs every weight into private memory at load). A file that is
modified in place while mapped can kill the process with SIGBUS, so replace model files atomically (a new
file renamed over the old one, as llmpy's writers do: the old mapping then stays valid).

Not handled: the Hugging Face / Meta checkpoints themselves (export them with llama2.c's export.py),
big-endian machines.
"""

import struct
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write_with, read_head
from llmpy.formats import sniff
from llmpy.formats.finite import check_finite
from llmpy.llama import rope
from llmpy.llama.model import LAYER_MATRICES, LlamaConfig, weight_shapes
from llmpy.llama.quant import QTensor, dequantize, quantize_q80

MAGIC = 0x616B3432  # "ak42" as a little-endian uint32
HEADER_BYTES = 256  # v1/v2 header size
V0_HEADER = struct.Struct("<7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
V1_HEADER = struct.Struct("<Ii7iB")  # magic, version, 7 config ints, shared_classifier
V2_HEADER = struct.Struct("<Ii7iBi")  # ... and group_size
VERSIONS = (0, 1, 2)
DEFAULT_GROUP_SIZE = 64
ROPE_THETA = 10000.0
# a header's seq_len is refused when what inference allocates for it exceeds this many times the weights' bytes
# (and 1 GiB), unless the caller chooses the context (max_seq_len); a real model's KV cache is a fraction of it
CONTEXT_LIMIT_WEIGHTS = 2
CONTEXT_FLOOR_BYTES = 1 << 30
SCORE_ROWS = 32  # rows of attention scores inference holds at once (llmpy.llama.inference.SMALL_BATCH)

V1_ORDER = ("rms_att", "rms_ffn", "rms_final", "tok_emb") + LAYER_MATRICES  # then wcls if unshared
V0_ORDER = ("tok_emb", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final")
NORMS = ("rms_att", "rms_ffn", "rms_final")
QUANTIZED = ("tok_emb",) + LAYER_MATRICES  # then wcls if unshared


def config_from_ints(ints, shared, where):
    """LlamaConfig from the header's seven ints (vocab_size already made positive), validated."""
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = ints
    config = LlamaConfig(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, bool(shared))
    config.validate(where)
    return config


def _nbytes(shape, itemsize=4):
    return int(np.prod(shape, dtype=object)) * itemsize


def context_bytes(config, positions=None):
    """Bytes that inference allocates per stream for `positions` positions (default seq_len): the fp32 KV
    cache of every layer, the attention scores of SCORE_ROWS rows, the RoPE tables."""
    positions = config.seq_len if positions is None else positions
    per_position = 2 * config.n_layers * config.kv_dim + SCORE_ROWS * config.n_heads + config.head_size
    return 4 * positions * per_position


def check_context(path, config, weight_bytes, max_seq_len=None):
    """LlmpyError if the header's seq_len would make inference allocate more than CONTEXT_LIMIT_WEIGHTS times
    the weights' bytes (and more than CONTEXT_FLOOR_BYTES), unless the caller chose a context (max_seq_len).

    v1/v2 files do not store anything of size seq_len, so a flipped bit there is seen by nothing else."""
    if max_seq_len is not None:
        return
    need = context_bytes(config)
    limit = max(CONTEXT_FLOOR_BYTES, CONTEXT_LIMIT_WEIGHTS * weight_bytes)
    if need > limit:
        raise LlmpyError(f"{path}: its header's seq_len {config.seq_len:,} needs {need / 2**30:,.1f} GiB of KV cache "
                         f"per stream, more than {CONTEXT_LIMIT_WEIGHTS} times the {weight_bytes / 2**30:,.2f} GiB of "
                         "weights: the header is probably corrupt. For a model with a really long context, choose how "
                         "many positions to allocate: max_seq_len=N (`llmpy run --context N`)")


def file_bytes(config, version, group_size=None):
    """The exact size of a llama2.c file of this version holding a model of `config`."""
    return (V0_HEADER.size if version == 0 else HEADER_BYTES) + _payload_bytes(config, version, group_size)


def read_header(path, max_seq_len=None):
    """(version, config, group_size or None, data offset) from a llama2.c file, checking sizes against its length.

    max_seq_len: the context the caller will allocate; None accepts the header's seq_len only when the memory it
    implies is in proportion to the weights (see check_context).
    """
    path = Path(path)
    sniff.check_kind(path, ("llama2c",), "a llama2.c model")
    head, size = read_head(path, HEADER_BYTES, "model file")
    if len(head) < V0_HEADER.size:
        raise LlmpyError(f"{path}: {size} bytes is too short for a llama2.c model header")
    magic = struct.unpack_from("<I", head)[0]
    if magic != MAGIC:  # legacy v0: no magic, the header is just the config
        ints = list(V0_HEADER.unpack_from(head))
        shared = ints[5] > 0
        ints[5] = abs(ints[5])
        version, group_size, offset = 0, None, V0_HEADER.size
        config = config_from_ints(ints, shared, str(path))
    else:
        if len(head) < HEADER_BYTES:
            raise LlmpyError(f"{path}: {size} bytes is too short for the 256-byte llama2.c v1/v2 header")
        version = struct.unpack_from("<i", head, 4)[0]
        if version == 1:
            _, _, *ints, shared = V1_HEADER.unpack_from(head)
            group_size = None
        elif version == 2:
            _, _, *ints, shared, group_size = V2_HEADER.unpack_from(head)
        else:
            raise LlmpyError(f"{path}: unknown llama2.c file version {version} (this reader knows 0, 1, 2): "
                             "re-export the model with llama2.c's export.py --version 0, 1 or 2")
        if shared not in (0, 1):
            raise LlmpyError(f"{path}: the shared_classifier flag is {shared}, not 0 or 1: the header is corrupt")
        config = config_from_ints(ints, shared, str(path))
        offset = HEADER_BYTES
    if version == 2:
        C, H = config.dim, config.hidden_dim
        if group_size <= 0 or C % group_size or H % group_size:
            raise LlmpyError(f"{path}: group size {group_size} must divide dim {C} and hidden_dim {H}: "
                             "re-export with `llmpy export IN OUT --to v2 --group-size N` using a smaller N")
    expected = file_bytes(config, version, group_size)
    if size != expected:
        raise LlmpyError(f"{path}: the header describes a v{version} model of {expected} bytes ({config}) but the file "
                         f"has {size} bytes: the file is truncated or not a llama2.c v{version} model")
    check_context(path, config, size - offset, max_seq_len)
    return version, config, group_size, offset


def _payload_bytes(config, version, group_size):
    shapes = weight_shapes(config)
    names = [n for n in shapes if n != "wcls" or not config.shared_classifier]
    if version == 2:
        fp32 = sum(_nbytes(shapes[n]) for n in NORMS)
        quant = sum(_nbytes(shapes[n], 1) + _nbytes(shapes[n]) // group_size for n in names if n not in NORMS)
        return fp32 + quant
    total = sum(_nbytes(shapes[n]) for n in names)
    if version == 0:
        total += 2 * _nbytes((config.seq_len, config.head_size // 2))  # freq_cis_real, freq_cis_imag
    return total


def read_llama2c(path, max_seq_len=None, allow_nonfinite=False):
    """Memory-map a llama2.c model: returns (config, weights, version, group_size).

    weights follows llmpy.llama.model's table: read-only views into the mapped file; for v2 the
    matrices are QTensors (int8 values + fp32 scales), one per layer in a list for the layered ones.
    Every fp32 weight and every Q8_0 scale must be finite, unless allow_nonfinite (then a warning).
    max_seq_len: see read_header. The views stay valid while the file is not modified in place: for a
    long run, copy what is kept (llmpy.llama.inference.Transformer does).
    """
    version, config, group_size, offset = read_header(path, max_seq_len)
    shapes = weight_shapes(config)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size != offset + _payload_bytes(config, version, group_size):
        raise LlmpyError(f"{path} changed size while it was opened; open it again once it is written")
    pos = offset

    def take(shape, dtype=np.float32):
        nonlocal pos
        n = _nbytes(shape, np.dtype(dtype).itemsize)
        view = data[pos:pos + n].view(dtype).reshape(shape)
        pos += n
        return view

    weights = {}
    if version == 0:
        for name in V0_ORDER:
            weights[name] = take(shapes[name])
        take((2, config.seq_len, config.head_size // 2))  # the RoPE tables: recomputed, not read
    elif version == 1:
        for name in V1_ORDER:
            weights[name] = take(shapes[name])
    else:
        for name in NORMS:
            weights[name] = take(shapes[name])

        def take_q(shape):
            q = take(shape, np.int8)
            s = take((*shape[:-1], shape[-1] // group_size))
            return QTensor(q, s, group_size)

        for name in QUANTIZED:
            shape = shapes[name]
            weights[name] = take_q(shape) if name == "tok_emb" else [take_q(shape[1:]) for _ in range(config.n_layers)]
    if config.shared_classifier:
        weights["wcls"] = weights["tok_emb"]
    else:
        weights["wcls"] = take_q(shapes["wcls"]) if version == 2 else take(shapes["wcls"])
    assert pos == data.size, f"read {pos} of {data.size} bytes"
    check_finite(path, _float_parts(weights), allow_nonfinite, "re-export the model (llmpy export or llama2.c's "
                                                                "export.py) from a checkpoint without NaN/inf")
    return config, weights, version, group_size


def _float_parts(weights):
    """{name: fp32 array} of everything in `weights` that can hold a NaN: fp32 tensors, Q8_0 scales."""
    parts = {}
    for name, w in weights.items():
        for i, x in enumerate(w if isinstance(w, list) else [w]):
            label = f"{name}[{i}]" if isinstance(w, list) else name
            parts[label + ".scales" if isinstance(x, QTensor) else label] = x.s if isinstance(x, QTensor) else x
    return parts


def rope_tables(config):
    """(cos, sin), each (seq_len, head_size / 2) fp32: the freq_cis tables llama2.c's v0 files carry
    (theta 10000 for llama2.c files; config.rope_theta and rope_scaling otherwise: llmpy.llama.rope)."""
    return rope.rope_tables(config)


def _fp32(w):
    """fp32 array from an fp32 array, a QTensor, or a per-layer list of either."""
    if isinstance(w, QTensor):
        return dequantize(w)
    if isinstance(w, list):
        return np.stack([_fp32(x) for x in w])
    return np.asarray(w, dtype=np.float32)


def _q8(w, group_size):
    """list of QTensors, one per layer (or one for a 2-D matrix), in the group size asked for."""
    if isinstance(w, list):
        return [_q8(x, group_size)[0] for x in w]
    if isinstance(w, QTensor) and w.group_size == group_size:
        return [w]
    w = _fp32(w)
    return [quantize_q80(x, group_size) for x in w] if w.ndim == 3 else [quantize_q80(w, group_size)]


def write_llama2c(path, config, weights, version, group_size=DEFAULT_GROUP_SIZE):
    """Write a llama2.c file of the given version, atomically (llmpy.fileio.atomic_write_with)."""
    if version not in VERSIONS:
        raise LlmpyError(f"unknown llama2.c version {version} for {path}: choose one of {VERSIONS}")
    if config.q_dim != config.dim:
        raise LlmpyError(f"{path}: a llama2.c file cannot store head_dim {config.head_size} (its header has no head "
                         f"size: run.c takes dim / n_heads = {config.dim} / {config.n_heads}); run the Hugging Face "
                         "directory itself: llmpy run DIR")
    if version == 2 and (group_size <= 0 or config.dim % group_size or config.hidden_dim % group_size):
        raise LlmpyError(f"group size {group_size} must divide dim {config.dim} and hidden_dim {config.hidden_dim}: "
                         "pick a smaller --group-size (e.g. 32)")
    ints = [config.dim, config.hidden_dim, config.n_layers, config.n_heads, config.n_kv_heads,
            config.vocab_size, config.seq_len]
    path = Path(path)

    def write(f):
        def put(w):
            a = _fp32(w)
            f.write(np.ascontiguousarray(a, dtype="<f4").data)

        if version == 0:
            ints[5] = ints[5] if config.shared_classifier else -ints[5]
            f.write(V0_HEADER.pack(*ints))
            for name in V0_ORDER:
                put(weights[name])
            cos, sin = rope_tables(config)
            put(cos)
            put(sin)
        else:
            if version == 1:
                head = V1_HEADER.pack(MAGIC, 1, *ints, int(config.shared_classifier))
            else:
                head = V2_HEADER.pack(MAGIC, 2, *ints, int(config.shared_classifier), group_size)
            f.write(head + b"\0" * (HEADER_BYTES - len(head)))
            if version == 1:
                for name in V1_ORDER:
                    put(weights[name])
            else:
                for name in NORMS:
                    put(weights[name])
                for name in QUANTIZED + (() if config.shared_classifier else ("wcls",)):
                    for t in _q8(weights[name], group_size):
                        f.write(np.ascontiguousarray(t.q, dtype=np.int8).data)
                        f.write(np.ascontiguousarray(t.s, dtype="<f4").data)
        if not config.shared_classifier and version != 2:
            put(weights["wcls"])

    atomic_write_with(path, write)
    assert path.stat().st_size == _payload_bytes(config, version, group_size) + (
        V0_HEADER.size if version == 0 else HEADER_BYTES), "writer and reader disagree on the layout"
    return path
