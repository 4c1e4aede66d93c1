"""llama.cpp on the bench's own weights, in the same run: write them as GGUF, decode with llama.cpp, compare tok/s.

`write_gguf(path, config, weights, gguf_type)` writes a Llama's fp32 weights (the bench's random ones, llama2.c's
layout) as a GGUF file of llama.cpp's `llama` architecture with the `gguf` package: its llama.* metadata, the tensor
names llama.cpp's converter writes (token_embd, blk.N.attn_norm / attn_q / attn_k / attn_v / attn_output / ffn_norm
/ ffn_gate (w1) / ffn_up (w3) / ffn_down (w2), output_norm, output unless it is the embedding table), the matrices
in F32, BF16 or Q8_0 (gguf.quants: bit-exact with ggml's own conversion) and the norms in F32 as the converter
keeps them, and a synthetic SentencePiece-style vocabulary llama.cpp accepts (<unk>, <s>, </s>, the 256 <0xNN>
byte tokens, then distinct filler pieces; bos 1, eos 2): the bench feeds token ids, never text.
No row permutation is needed: llama2.c's q/k rows pair adjacent dimensions for RoPE, as Meta's checkpoints and
GGUF's llama architecture do (llama.cpp's converter un-permutes Hugging Face's half-split rows into this layout).

`LlamaCpp(path, n_threads, n_ctx)` loads such a file with llama-cpp-python's low-level API (into memory, below)
and decodes one token per `forward` call (llama_decode on a one-token batch, its logits as a NumPy
view), the same call the bench's decode loop makes on a Transformer, so one loop times both. `compare` does this for
each of a model's dtypes (fp32 vs F32, bf16 vs BF16, int8 vs Q8_0), one GGUF file at a time in a temporary
directory, after a parity check of the logits (a mismatch means the two would not be running the same model: no
ratio is reported then).

What differs between the two sides, on purpose or not:
- KV cache: llama.cpp's is f16 by default (with flash attention where its CPU backend picks it), ours fp32:
  llama.cpp reads half the cache bytes per token (small next to the weights at the bench's lengths).
  exact_attention=True (the tests) asks llama.cpp for an f32 cache without flash attention.
- Q8_0: llama.cpp's blocks are 32 weights with an fp16 scale (34 bytes), ours 64 with an fp32 scale (68 bytes):
  both 1.0625 bytes per weight; both quantize the activations to int8 for the dot products, so the logits differ
  by the two quantizations' noise, not more.
- BF16: llama.cpp rounds the activations to bf16 for its bf16 dot products; ours keeps them fp32.
- Weights: llama.cpp reads the file into its own memory (use_mmap=False, not its default memory map), as ours are
  in private memory: on the development VM a reclaim daemon (DAMON pageout) drops file pages idle for a second or
  two, so a memory-mapped model was read again from disk in each of its rounds after ours (2-8 tok/s instead of
  ~200 for 110M Q8_0). Its thread pool (OpenMP) gets n_threads = the count our side starts with.

Not handled: quantized or bf16 input weights (the writer takes fp32 arrays), other architectures, text prompts.
"""

import functools
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError, import_optional
from llmpy.llama.model import BOS, EOS

GGUF_TYPES = {"fp32": "F32", "bf16": "BF16", "int8": "Q8_0"}  # our dtype -> the GGUF type it is timed against
UNK = 0  # token 0 is <unk> in llama2.c's (SentencePiece) vocabulary
N_BYTE_TOKENS = 256  # <0x00> .. <0xFF>, after <unk>, <s>, </s>
GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
N_BATCH = 64  # llama.cpp's batch (decode feeds one token; it raises smaller batches to its KQ mask padding anyway)
PARITY_POSITIONS = 8  # positions whose logits are compared before timing
# relative RMS difference of the logits allowed per dtype: fp32 only by llama.cpp's f16 KV cache (measured 5e-4 to
# 1.3e-3 on the bench's shapes), bf16 also by its bf16 activations (4e-3 to 1.1e-2), int8 by two different Q8_0
# quantizations of the weights and of the activations (0.03 to 0.07). Other weights differ by ~1, swapped w1/w3 by
# ~0.5 and q/k rows in the wrong RoPE layout by ~0.13 on 110M (the random weights' attention is nearly uniform): the
# F32 check catches all of these (the tests hold the layout to 1e-4 with peaked attention).
PARITY_TOLERANCE = {"fp32": 1e-2, "bf16": 5e-2, "int8": 0.25}
INSTALL_HINT = "pip install llama-cpp-python gguf (pip builds llama.cpp from source: tens of minutes on 2 cores)"


def unavailable():
    """None when llama.cpp can be timed here (llama_cpp and gguf import), else a line saying why not and what to do."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:  # OSError / RuntimeError: its shared library did not load
        return f"llama.cpp comparison skipped ({type(e).__name__}: {e}); to include it: {INSTALL_HINT}"
    return None


def _gguf():
    return import_optional("gguf", "writing GGUF files (llmpy bench run's llama.cpp comparison)", "test")


# -----------------------------------------------------------------------------
# writing GGUF

def vocabulary(vocab_size):
    """(tokens, scores, token types) of a synthetic SentencePiece vocabulary of vocab_size pieces: <unk>, <s>, </s>,
    the byte tokens <0x00>..<0xFF> (llama.cpp's SPM tokenizer looks up <0x0A> for its newline), then filler pieces
    ▁w<i> of decreasing score."""
    gguf = _gguf()
    first = 3 + N_BYTE_TOKENS
    if vocab_size < first:
        raise LlmpyError(f"vocab_size {vocab_size} is below the {first} tokens a llama.cpp SPM vocabulary starts with "
                         "(<unk>, <s>, </s> and 256 byte tokens)")
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(N_BYTE_TOKENS)]
    tokens += [f"\u2581w{i}" for i in range(vocab_size - first)]
    scores = [0.0] * first + [-float(i) for i in range(vocab_size - first)]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * N_BYTE_TOKENS + [T.NORMAL] * (vocab_size - first)
    return tokens, scores, [int(t) for t in types]


def _layer_matrices(config, weights, layer):
    """{GGUF name: (OC, IC) fp32 array} of one layer, from the packed stacks the bench makes (weights["packed"]:
    wqkv = [wq; wk; wv], w13 = [w1; w3]) or llama2.c's per-layer names (llmpy.llama.model)."""
    C, KV, H = config.dim, config.kv_dim, config.hidden_dim
    p = weights.get("packed")
    if p is not None:
        wqkv, w13 = p["wqkv"][layer], p["w13"][layer]
        wq, wk, wv, wo, w1, w3, w2 = wqkv[:C], wqkv[C:C + KV], wqkv[C + KV:], p["wo"][layer], w13[:H], w13[H:], \
            p["w2"][layer]
    else:
        wq, wk, wv, wo, w1, w2, w3 = (weights[k][layer] for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
    return {"attn_q": wq, "attn_k": wk, "attn_v": wv, "attn_output": wo, "ffn_gate": w1, "ffn_up": w3, "ffn_down": w2}


def gguf_tensors(config, weights):
    """[(GGUF tensor name, fp32 array, is a matrix)] in the order llama.cpp's converter writes them; the classifier
    ("output") only when it is not the embedding table itself."""
    out = [("token_embd.weight", weights["tok_emb"], True)]
    for layer in range(config.n_layers):
        mats = _layer_matrices(config, weights, layer)
        out.append((f"blk.{layer}.attn_norm.weight", weights["rms_att"][layer], False))
        out += [(f"blk.{layer}.{k}.weight", mats[k], True) for k in ("attn_q", "attn_k", "attn_v", "attn_output")]
        out.append((f"blk.{layer}.ffn_norm.weight", weights["rms_ffn"][layer], False))
        out += [(f"blk.{layer}.{k}.weight", mats[k], True) for k in ("ffn_gate", "ffn_up", "ffn_down")]
    out.append(("output_norm.weight", weights["rms_final"], False))
    if weights["wcls"] is not weights["tok_emb"]:
        out.append(("output.weight", weights["wcls"], True))
    for name, w, _ in out:
        if not isinstance(w, np.ndarray) or w.dtype != np.float32:
            raise LlmpyError(f"GGUF writer: {name} is {type(w).__name__} {getattr(w, 'dtype', '')}; it takes fp32 "
                             "weights (the bench's), quantizing or rounding them itself")
    return out


def _layout(gguf, w, qtype):
    """(shape, dtype, nbytes) GGUFWriter.add_tensor_info takes for w stored as qtype (bytes per row for BF16 / Q8_0)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return w.shape, np.float32, w.nbytes
    try:
        shape = gguf.quants.quant_shape_to_byte_shape(w.shape, qtype)
    except ValueError as e:
        raise LlmpyError(f"GGUF writer: {e}; {qtype.name} needs rows that are a multiple of its block") from e
    return shape, np.uint8, math.prod(shape)


def gguf_nbytes(config, weights, gguf_type):
    """Bytes of tensor data a write_gguf of these weights as gguf_type holds (for a free-space check)."""
    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType[gguf_type]
    F32 = gguf.GGMLQuantizationType.F32
    return sum(_layout(gguf, w, qtype if matrix else F32)[2] for _, w, matrix in gguf_tensors(config, weights))


def write_gguf(path, config, weights, gguf_type, name="llmpy bench"):
    """Write fp32 weights (weights["packed"] as the bench keeps them, or llama2.c's names) as a new GGUF file of
    architecture llama, the matrices in gguf_type ("F32", "BF16" or "Q8_0"), the norms in F32.

    A new file only (an existing path is refused: nothing is overwritten); the bench writes into a temporary
    directory. The tensors are converted and written one at a time (no second copy of the model in memory).
    """
    gguf = _gguf()
    path = Path(path)
    if path.exists():
        raise LlmpyError(f"{path} exists: the GGUF writer only writes new files; choose another path")
    if gguf_type not in ("F32", "BF16", "Q8_0"):
        raise LlmpyError(f"GGUF type {gguf_type!r}: choose F32, BF16 or Q8_0")
    qtype = gguf.GGMLQuantizationType[gguf_type]
    F32 = gguf.GGMLQuantizationType.F32
    c = config
    tensors = gguf_tensors(c, weights)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                          "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    if gguf_type == "Q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(c.vocab_size)
    writer.add_context_length(c.seq_len)
    writer.add_embedding_length(c.dim)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_dimension_count(c.head_size)
    writer.add_rope_freq_base(float(c.rope_theta))
    writer.add_layer_norm_rms_eps(float(c.norm_eps))
    tokens, scores, types = vocabulary(c.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for tname, w, matrix in tensors:
        shape, dtype, nbytes = _layout(gguf, w, qtype if matrix else F32)
        writer.add_tensor_info(tname, shape, np.dtype(dtype), nbytes, raw_dtype=None if dtype == np.float32
                               else qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tname, w, matrix in tensors:
            data = np.ascontiguousarray(w)
            if matrix and qtype != F32:
                data = gguf.quants.quantize(data, qtype)  # (OC, bytes per row) uint8
            writer.write_tensor_data(data)
    except BaseException:
        writer.close()
        path.unlink(missing_ok=True)  # no half-written file left behind
        raise
    writer.close()


# -----------------------------------------------------------------------------
# running llama.cpp

@functools.cache  # one callback for the process, kept alive while llama.cpp holds its address
def _errors_only_log(lc):
    """A llama.cpp log callback that prints its errors (GGML_LOG_LEVEL_ERROR) to stderr and drops the rest (the
    load report, warnings such as a context above the model's): llama-cpp-python's own callback maps ggml's
    levels one off and shows warnings but hides errors."""
    @lc.llama_log_callback
    def log(level, text, user_data):
        if level == GGML_LOG_LEVEL_ERROR:
            sys.stderr.write(text.decode("utf-8", "replace"))
    return log


class LlamaCpp:
    """A GGUF model and a one-sequence context in llama.cpp (llama-cpp-python's low-level API).

    forward(tokens, positions, streams=None) takes one token of stream 0, like Transformer.forward in the bench's
    decode loop, and returns its logits (1, V): a view of llama.cpp's output buffer, valid until the next call.
    Position 0 starts a new sequence (the KV cache is cleared). Use as a context manager, or close().
    """

    def __init__(self, path, n_threads, n_ctx, exact_attention=False, use_mmap=False):
        """n_threads: for decode and batches; n_ctx: the context (KV cache positions); exact_attention: an f32 KV
        cache and no flash attention (llama.cpp's defaults are f16 and its choice); use_mmap: map the file instead
        of reading it into memory (the file must then stay in place while this object lives)."""
        try:
            import llama_cpp as lc
        except ImportError as e:
            raise LlmpyError(f"timing llama.cpp needs llama-cpp-python: {INSTALL_HINT}") from e
        self.lc = lc
        lc.llama_log_set(_errors_only_log(lc), None)
        lc.llama_backend_init()
        self.model = self.ctx = self.batch = None
        mparams = lc.llama_model_default_params()
        mparams.use_mmap = use_mmap
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise LlmpyError(f"llama.cpp could not load {path} (its error above says why)")
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        if exact_attention:
            params.type_k = params.type_v = lc.GGML_TYPE_F32
            params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            self.close()
            raise LlmpyError(f"llama.cpp could not make a context of {n_ctx} tokens for {path}")
        self.vocab_size = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(1, 0, 1)  # one token of sequence 0, with logits
        self.batch.n_tokens = 1
        self.batch.n_seq_id[0] = 1
        self.batch.seq_id[0][0] = 0
        self.batch.logits[0] = 1

    def forward(self, tokens, positions, streams=None):
        # tokens, positions: (1,) ints
        assert len(tokens) == 1 and (streams is None or int(streams[0]) == 0), "LlamaCpp decodes one stream"
        pos = int(positions[0])
        if pos == 0:  # a new sequence (the next round): llama.cpp wants positions to follow its cache's
            self.lc.llama_memory_clear(self.memory, False)
        self.batch.token[0] = int(tokens[0])
        self.batch.pos[0] = pos
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise LlmpyError(f"llama_decode returned {rc} at position {pos}")
        return np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, -1), (1, self.vocab_size))

    def close(self):
        if self.batch is not None:
            self.lc.llama_batch_free(self.batch)
        if self.ctx:
            self.lc.llama_free(self.ctx)
        if self.model:
            self.lc.llama_model_free(self.model)
        self.model = self.ctx = self.batch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def logits_difference(ours, theirs, positions=PARITY_POSITIONS):
    """Largest relative RMS difference ||theirs - ours|| / ||ours|| of the logits over the first `positions`
    positions, both fed BOS then the same varied tokens (fixed pseudo-random ids: a random-weight model's greedy
    tokens often repeat one id, under which attention hardly depends on the positions)."""
    vocab_size = ours.config.vocab_size
    tokens = [BOS] + [int(i) for i in np.random.default_rng(0).integers(3, vocab_size, positions - 1)]
    worst = 0.0
    for pos, tok in enumerate(tokens):
        a = np.array(ours.forward([tok], [pos])[0], np.float64)  # copies: both return views of reused buffers
        b = np.array(theirs.forward([tok], [pos])[0], np.float64)
        worst = max(worst, float(np.linalg.norm(b - a) / np.linalg.norm(a)))
    return worst


def compare(config, weights, transformers, tokens, repeats, decode_rates):
    """[(our dtype, GGUF type, ours tok/s, llama.cpp tok/s, best/best ratio, median per-round ratio, logits
    difference, problem or None)] for each Transformer (one stream each, built from these fp32 weights).

    One GGUF file at a time in a temporary directory, deleted once llama.cpp has read it. decode_rates is the bench's
    timing loop (run._decode_rates): our Transformer and llama.cpp take turns in each of `repeats` rounds.
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmpy-bench-gguf-") as tmp:
        for t in transformers:
            gtype = GGUF_TYPES[t.dtype]
            row = [t.dtype, gtype, None, None, None, None, None, None]
            need = gguf_nbytes(config, weights, gtype) + (64 << 20)
            free = shutil.disk_usage(tmp).free
            if free < need:
                row[-1] = f"skipped: {need / 1e9:.1f} GB needed in {tmp}, {free / 1e9:.1f} GB free"
                rows.append(row)
                continue
            path = Path(tmp) / f"model-{gtype}.gguf"
            write_gguf(path, config, weights, gtype)
            try:
                with LlamaCpp(path, t.governor.current, config.seq_len) as lcpp:
                    path.unlink()  # llama.cpp holds its own copy now (not memory-mapped): the disk space is free again
                    diff = logits_difference(t, lcpp)
                    row[6] = diff
                    if not diff <= PARITY_TOLERANCE[t.dtype]:
                        row[-1] = (f"LOGITS DIFFER: relative difference {diff:.3g} > {PARITY_TOLERANCE[t.dtype]:g}: "
                                   "not the same model, no ratio")
                    else:
                        # one untimed run first: llama.cpp's first decodes after loading are slow (TinyLlama F32: 1.7
                        # tok/s, then 6.2), while ours come warm from the bench's own rounds
                        decode_rates([(lcpp, 1)], tokens, 1, lambda: 1.0)
                        (ours, _, ours_rounds, _), (theirs, _, theirs_rounds, _) = decode_rates(
                            [(t, 1), (lcpp, 1)], tokens, repeats, lambda: 1.0)
                        per_round = float(np.median(np.array(ours_rounds) / np.array(theirs_rounds)))
                        row[2:6] = ours, theirs, ours / theirs, per_round
            except LlmpyError as e:
                row[-1] = f"FAILED: {e}"
            finally:
                path.unlink(missing_ok=True)
            rows.append(row)
    return rows


def report(rows, tokens, repeats):
    """The lines `llmpy bench run` prints for compare's rows: (model name, *row) each."""
    import llama_cpp

    title = (f"llama.cpp (llama-cpp-python {getattr(llama_cpp, '__version__', '?')}) on the same weights as GGUF, "
             f"greedy decode of {tokens} tokens from BOS, best of {repeats} runs taking turns with llm.py;\n"
             "ratio = llm.py / llama.cpp tok/s (best / best, and the median of the per-round ratios); "
             f"logits diff = relative RMS difference over the first {PARITY_POSITIONS} positions")
    header = (f"{'model':>14} {'llm.py':>6} {'llama.cpp':>9} {'llm.py tok/s':>13} {'llama.cpp tok/s':>16} "
              f"{'ratio':>7} {'median':>7} {'logits diff':>12}")
    lines = [title, header]
    for name, kind, gtype, ours, theirs, ratio, per_round, diff, problem in rows:
        d = f"{diff:12.2g}" if diff is not None else f"{'':>12}"
        if problem is None:
            lines.append(f"{name:>14} {kind:>6} {gtype:>9} {ours:13.1f} {theirs:16.1f} {ratio:6.2f}x "
                         f"{per_round:6.2f}x {d}")
        else:
            lines.append(f"{name:>14} {kind:>6} {gtype:>9} {'':>13} {'':>16} {'':>7} {'':>7} {d}   {problem}")
    return lines
