"""Load a Hugging Face Llama checkpoint (LlamaForCausalLM) for inference: config.json + safetensors.

    config, weights = load_hf("SmolLM2-135M-Instruct/")     # a directory
    path = hf_snapshot("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id, downloaded into the HF cache once

A directory holds config.json and either model.safetensors or shards listed in model.safetensors.index.json
(its "weight_map": tensor name -> shard file). Tensors map onto llama2.c's names (llmpy/llama/model.py):

    model.embed_tokens.weight                      tok_emb        model.norm.weight        rms_final
    model.layers.{l}.input_layernorm.weight        rms_att[l]     lm_head.weight           wcls (untied)
    model.layers.{l}.self_attn.{q,k,v,o}_proj      wq wk wv wo    post_attention_layernorm rms_ffn[l]
    model.layers.{l}.mlp.gate_proj / up_proj / down_proj          w1 / w3 / w2

Hugging Face rotates the two halves of each head (rotate_half); llama2.c's kernels rotate adjacent pairs,
so the rows of q_proj and k_proj are un-permuted within each head at load (unpermute_rope_rows, the inverse
of llmpy.llama.hf.permute_rope_rows): attention scores are the same, since q.k is summed over the same pairs.

fp32, bf16 and fp16 tensors are read from the files' memory maps and converted a block of rows at a time
(BLOCK_ELEMENTS) into the final stacks the inference Transformer uses (weights["packed"]: wqkv, wo, w13, w2),
stored as fp32, bf16 (dtype="bf16") or Q8_0 (quantize="q8"), so loading holds no fp32 copy of the model, nor of
a tensor: an int8 Llama-2-7B (~7 GB) loads from its bf16 shards in that much memory plus the fp32 embedding
table the Transformer dequantizes. The per-layer lists (weights["wq"][l], ...) are views into those stacks.

Config keys read: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads
(GQA/MQA), head_dim (default hidden_size / num_attention_heads; another even size makes q_proj (NH * head_dim,
hidden_size) and o_proj its transpose's shape, as in width-pruned Minitron models), vocab_size,
max_position_embeddings, rms_norm_eps, rope_theta, rope_scaling or rope_parameters (linear, llama3),
tie_word_embeddings (transformers' default: untied), bos_token_id, eos_token_id (a number or a list; also
generation_config.json's). Anything else a config asks for (biases, another architecture or activation,
sliding windows, other RoPE types) is an LlmpyError, never silently ignored.

Not handled: pytorch_model.bin (pickle: never loaded), quantized checkpoints, other architectures.
"""

import json
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.formats.finite import check_finite, first_nonfinite
from llmpy.formats.llmc import fp32_to_bf16
from llmpy.formats.safetensors import bf16_to_fp32, read_header, read_safetensors
from llmpy.llama.inference import q8_group_size
from llmpy.llama.model import LlamaConfig
from llmpy.llama.quant import QTensor, quantize_q80
from llmpy.llama.rope import ROPE_TYPES

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_CONTEXT = 4096  # KV cache positions allocated unless --context asks (Llama 3.2's 131072 would be 8 GiB)
ARCHITECTURE = "LlamaForCausalLM"
FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float16"))  # and BF16, read raw (uint16) and converted
# tensors a checkpoint may carry that inference does not need (old transformers saved the RoPE frequencies)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
BLOCK_ELEMENTS = 1 << 18  # a tensor is converted (and quantized) this many elements at a time: no fp32 copy of it
DTYPES = ("fp32", "bf16", "fp16")  # load_hf's dtype=; quantize="q8" for Q8_0
FP16_MAX = 65504.0  # the largest finite float16
LAYER_TENSORS = {  # HF name inside model.layers.{l}. -> llama2.c name
    "self_attn.q_proj.weight": "wq", "self_attn.k_proj.weight": "wk", "self_attn.v_proj.weight": "wv",
    "self_attn.o_proj.weight": "wo", "mlp.gate_proj.weight": "w1", "mlp.down_proj.weight": "w2",
    "mlp.up_proj.weight": "w3", "input_layernorm.weight": "rms_att", "post_attention_layernorm.weight": "rms_ffn",
}


def unpermute_rope_rows(w, n_heads):
    """(n_heads*hs, C) Hugging Face half-split rows -> llama2.c pair-interleaved rows, per head.

    HF row (h, half, i) becomes llama2.c row (h, 2i + half): the inverse of hf.permute_rope_rows."""
    out_dim, C = w.shape
    hs = out_dim // n_heads
    return w.reshape(n_heads, 2, hs // 2, C).transpose(0, 2, 1, 3).reshape(out_dim, C)


# -----------------------------------------------------------------------------
# config.json

def _read_json(path, what):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise LlmpyError(f"{path} is missing: {what}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise LlmpyError(f"cannot read {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LlmpyError(f"{path} is not valid JSON ({e}): the download is damaged; fetch the file again") from e
    if not isinstance(data, dict):
        raise LlmpyError(f"{path} holds a JSON {type(data).__name__}, not an object: not a Hugging Face file")
    return data


def _ids(value, path, key):
    """A token id given as a number, a list of numbers or null -> tuple of ints."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise LlmpyError(f"{path}: {key} must be a token id or a list of them, got {value!r}")
    return tuple(values)


def rope_scaling_from(hf, path):
    """(theta, scaling dict or None) from rope_parameters (transformers >= 5) or rope_theta + rope_scaling."""
    params = hf.get("rope_parameters") or {}
    old = hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(old, dict):
        raise LlmpyError(f"{path}: rope_parameters / rope_scaling must be objects (per-layer RoPE is not supported)")
    merged = {**old, **params}
    theta = float(merged.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = merged.get("rope_type", merged.get("type", "default"))
    if float(merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise LlmpyError(f"{path}: partial_rotary_factor is not supported (RoPE over whole heads only)")
    if kind == "default":
        return theta, None
    if kind not in ROPE_TYPES:
        raise LlmpyError(f"{path}: rope type {kind!r} is not supported: llmpy runs {', '.join(ROPE_TYPES)} "
                         "scaling or none")
    need = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor")}[kind]
    missing = [k for k in need if not isinstance(merged.get(k), (int, float))]
    if missing:
        raise LlmpyError(f"{path}: {kind} RoPE scaling needs {', '.join(missing)}")
    scaling = {"rope_type": kind, **{k: float(merged[k]) for k in need}}
    if kind == "llama3":
        original = merged.get("original_max_position_embeddings", hf.get("max_position_embeddings"))
        scaling["original_max_position_embeddings"] = int(original)
        if scaling["low_freq_factor"] == scaling["high_freq_factor"]:
            raise LlmpyError(f"{path}: llama3 RoPE scaling needs low_freq_factor != high_freq_factor")
    return theta, scaling


def config_from_hf(hf, path, generation=None):
    """LlamaConfig from config.json's dict (and generation_config.json's, for eos ids); LlmpyError for what
    the kernels cannot run."""
    archs = hf.get("architectures") or [ARCHITECTURE]
    if ARCHITECTURE not in archs or hf.get("model_type", "llama") != "llama":
        raise LlmpyError(f"{path}: architecture {archs} / model_type {hf.get('model_type')!r} is not supported: "
                         f"llmpy runs {ARCHITECTURE} (model_type llama) checkpoints")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise LlmpyError(f"{path}: {key}=true is not supported (llmpy's Llama linears have no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise LlmpyError(f"{path}: hidden_act {hf.get('hidden_act')!r} is not supported (SwiGLU with silu only)")
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "?") if isinstance(hf["quantization_config"], dict) \
            else "?"
        raise LlmpyError(f"{path}: a quantized checkpoint ({method}) is not supported: use the fp32/bf16/fp16 "
                         "original (llmpy export ... --to v2 makes an int8 llama2.c file)")
    if hf.get("sliding_window") or hf.get("use_sliding_window"):
        raise LlmpyError(f"{path}: sliding-window attention is not supported")
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    sizes = {}
    for key in (*required, "num_key_value_heads", "max_position_embeddings", "head_dim"):
        value = hf.get(key)
        if value is None and key not in required:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise LlmpyError(f"{path}: {key} must be a positive integer, got {value!r}")
        sizes[key] = value
    C, NH = sizes["hidden_size"], sizes["num_attention_heads"]
    NKV = sizes.get("num_key_value_heads", NH)
    head_dim = sizes.get("head_dim")  # transformers: head_dim, else hidden_size // num_attention_heads
    if (head_dim is None and C % NH) or NH % NKV:
        raise LlmpyError(f"{path}: hidden_size {C}, num_attention_heads {NH}, num_key_value_heads {NKV} do not "
                         "divide into whole heads and groups")
    if head_dim is not None and head_dim % 2:
        raise LlmpyError(f"{path}: head_dim {head_dim} is odd: RoPE turns pairs of values, so heads of even size only")
    theta, scaling = rope_scaling_from(hf, path)
    eps = hf.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise LlmpyError(f"{path}: rms_norm_eps must be a positive number, got {eps!r}")
    eos = _ids(hf.get("eos_token_id"), path, "eos_token_id")
    if generation:
        eos += tuple(i for i in _ids(generation.get("eos_token_id"), path, "generation eos_token_id") if i not in eos)
    bos = _ids(hf.get("bos_token_id"), path, "bos_token_id")
    config = LlamaConfig(dim=C, hidden_dim=sizes["intermediate_size"], n_layers=sizes["num_hidden_layers"],
                         n_heads=NH, n_kv_heads=NKV, vocab_size=sizes["vocab_size"],
                         seq_len=sizes.get("max_position_embeddings", 2048),
                         shared_classifier=bool(hf.get("tie_word_embeddings", False)), rope_theta=theta,
                         norm_eps=float(eps), rope_scaling=scaling, bos_id=bos[0] if bos else None, eos_ids=eos,
                         head_dim=None if head_dim is None or head_dim * NH == C else head_dim)
    config.validate(str(path))
    return config


def read_config(model_dir):
    """LlamaConfig of a Hugging Face model directory."""
    model_dir = Path(model_dir)
    hf = _read_json(model_dir / CONFIG, "not a Hugging Face model directory (needs config.json and "
                                        "model.safetensors): pass the directory a checkpoint was saved to")
    gen_path = model_dir / GENERATION_CONFIG
    generation = _read_json(gen_path, "") if gen_path.exists() else None
    return config_from_hf(hf, model_dir / CONFIG, generation)


# -----------------------------------------------------------------------------
# tensors

def tensor_files(model_dir):
    """{tensor name: safetensors path}: from model.safetensors.index.json's weight_map, else model.safetensors."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX
    if index.exists():
        weight_map = _read_json(index, "").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise LlmpyError(f"{index} has no weight_map: the download is damaged; fetch it again")
        files = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise LlmpyError(f"{index}: tensor {name} is mapped to {shard!r}, not a file in the directory")
            files[name] = model_dir / shard
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise LlmpyError(f"{shard} is missing: {index} lists it; download every shard "
                                 f"(huggingface-cli download or llmpy run <hub id>)")
        return files
    single = model_dir / SINGLE
    if not single.is_file():
        other = " (pytorch_model.bin is a pickle, which llmpy never loads: convert it to safetensors)" if \
            (model_dir / "pytorch_model.bin").exists() else ""
        raise LlmpyError(f"{model_dir} has neither {SINGLE} nor {INDEX}: no weights to load{other}")
    header = read_header(single)[0]
    return {name: single for name in header}


class _Tensors:
    """The tensors of a checkpoint, read from each file's memory map on demand (raw bf16 as uint16)."""

    def __init__(self, model_dir, files, bf16):
        self.model_dir = model_dir
        self.files = files
        self.bf16 = bf16  # names of the BF16 tensors
        self.open = {}

    def path(self, name):
        return self.files[name]

    def raw(self, name):
        if name not in self.files:
            shards = sorted({p.name for p in self.files.values()})
            raise LlmpyError(f"{self.model_dir}: tensor {name} is in none of {', '.join(shards)}: not a complete "
                             f"{ARCHITECTURE} checkpoint; download it again")
        path = self.files[name]
        if path not in self.open:
            self.open[path] = read_safetensors(path, raw_bf16=True)[0]
        tensors = self.open[path]
        if name not in tensors:
            raise LlmpyError(f"{path}: tensor {name} is listed in the index but not in this shard: the download is "
                             "damaged; fetch it again")
        return tensors[name]

    def into(self, out, name, shape, allow_nonfinite, heads=None):
        """Copy tensor `name` (checked to have `shape`) into `out`: an fp32 array, a uint16 array (rounded to
        bf16) or a QTensor (quantized to Q8_0), BLOCK_ELEMENTS at a time (whole rows), so that no fp32 copy of
        the whole tensor is ever made. heads: the head count whose rows are un-permuted (q_proj, k_proj)."""
        a = self.raw(name)
        if tuple(a.shape) != tuple(shape):
            raise LlmpyError(f"{self.files[name]}: tensor {name} has shape {tuple(a.shape)} but config.json asks for "
                             f"{tuple(shape)}: the weights do not belong to this config.json")
        if name not in self.bf16 and a.dtype not in FLOAT_DTYPES:
            raise LlmpyError(f"{self.files[name]}: tensor {name} has dtype {a.dtype}: only fp32, bf16 and fp16 "
                             "weights are supported (quantized checkpoints are not)")
        rows = a.reshape(shape[0] if len(shape) > 1 else 1, -1)
        order = None if heads is None else unpermute_rope_rows(np.arange(shape[0])[:, None], heads)[:, 0]
        n = max(1, BLOCK_ELEMENTS // rows.shape[1])  # rows per block
        checked = False
        for r in range(0, rows.shape[0], n):
            block = rows[r:r + n] if order is None else rows[order[r:r + n]]
            x = bf16_to_fp32(block) if name in self.bf16 else np.asarray(block, dtype=np.float32)
            if not checked and first_nonfinite(x) is not None:  # a warned tensor (allow_nonfinite): not again
                label = name if n >= rows.shape[0] else f"{name} (llmpy's rows {r}..{r + len(x) - 1})"
                check_finite(self.files[name], {label: x}, allow_nonfinite)
                checked = True
            if getattr(out, "dtype", None) == np.float16 and np.abs(x).max(initial=0.0) > FP16_MAX:
                raise LlmpyError(f"{self.files[name]}: tensor {name} has values beyond float16's range (+-65504): "
                                 "load it as bf16 or fp32 (--dtype bf16|fp32)")
            _store(out, r, x if len(shape) > 1 else x.reshape(-1))


def _store(out, row, x):
    """out[row:row + len(x)] = fp32 rows x, as out keeps them: fp32, fp16, bf16 bits (uint16) or Q8_0 (QTensor)."""
    end = row + len(x)
    if isinstance(out, QTensor):
        t = quantize_q80(x, out.group_size)
        out.q[row:end], out.s[row:end] = t.q, t.s
    elif out.dtype == np.uint16:
        out[row:end] = fp32_to_bf16(x)
    else:
        out[row:end] = x


def _empty(shape, dtype, group_size):
    """An uninitialized weight of `shape` stored as dtype: "fp32", "bf16" (uint16 bits), "fp16" or "q8" (QTensor)."""
    if dtype == "q8":
        return QTensor(np.empty(shape, np.int8), np.empty((*shape[:-1], shape[-1] // group_size), np.float32),
                       group_size)
    return np.empty(shape, {"bf16": np.uint16, "fp16": np.float16}.get(dtype, np.float32))


def _stored_dtype(tensors, names):
    """"bf16" or "fp16" when every tensor of `names` is stored so, else "fp32"."""
    if all(n in tensors.bf16 for n in names):
        return "bf16"
    if all(tensors.raw(n).dtype == np.float16 for n in names):
        return "fp16"
    return "fp32"


def _part(w, *index):
    """w[index] of an array or a QTensor (a view: rows of one layer's stacked matrix)."""
    return QTensor(w.q[index], w.s[index], w.group_size) if isinstance(w, QTensor) else w[index]


def _bf16_names(files):
    """Names of the tensors stored as BF16 (read_safetensors gives them as raw uint16)."""
    names = set()
    for path in sorted(set(files.values())):
        header = read_header(path)[0]
        names |= {n for n, info in header.items() if isinstance(info, dict) and info.get("dtype") == "BF16"}
    return names


def load_hf(model_dir, max_seq_len=None, allow_nonfinite=False, dtype=None, quantize=None):
    """(LlamaConfig, weights) of a Hugging Face Llama directory, ready for llmpy.llama.inference.Transformer.

    max_seq_len: the context (KV cache positions); default min(max_position_embeddings, DEFAULT_CONTEXT).
    dtype: the matrices and embedding stored as "fp32", "bf16" (uint16 bits, rounded to nearest even) or "fp16";
    None: as the checkpoint stores them (bf16 or fp16 when every matrix is stored so, else fp32);
    quantize="q8": stored as Q8_0 in groups of inference.q8_group_size (the Transformer dequantizes the embedding
    table, as runq.c does). Each tensor is converted a block of rows at a time straight from the file's memory
    map into its final place: the peak is the stored model plus one block (an int8 Llama-2-7B is ~7 GB)."""
    model_dir = Path(model_dir)
    if dtype not in (None, *DTYPES):
        raise LlmpyError(f"dtype must be None or one of {DTYPES}, got {dtype!r}")
    if quantize not in (None, "q8"):
        raise LlmpyError(f"quantize must be None or 'q8', got {quantize!r}")
    if not model_dir.is_dir():
        raise LlmpyError(f"{model_dir} is not a directory: pass a Hugging Face model directory or hub id")
    config = read_config(model_dir)
    if max_seq_len is None and config.seq_len > DEFAULT_CONTEXT:
        max_seq_len = DEFAULT_CONTEXT
    if max_seq_len is not None:
        if max_seq_len < 1:
            raise LlmpyError(f"the context (--context) must be >= 1, got {max_seq_len}")
        config.seq_len = min(config.seq_len, int(max_seq_len))
    files = tensor_files(model_dir)
    unknown = [n for n in files if not _known(n, config) and not n.endswith(IGNORED_SUFFIXES)]
    if unknown:
        raise LlmpyError(f"{files[unknown[0]]}: tensor {unknown[0]} (and {len(unknown) - 1} more) is not part of "
                         f"a {ARCHITECTURE} llmpy can run (biases or another architecture)")
    tensors = _Tensors(model_dir, files, _bf16_names(files))
    L, C, H, V, KV, QD = config.n_layers, config.dim, config.hidden_dim, config.vocab_size, config.kv_dim, config.q_dim
    if dtype is None:
        dtype = _stored_dtype(tensors, [n for n in files if not n.endswith(("norm.weight", *IGNORED_SUFFIXES))])
    store = quantize or dtype
    gs = q8_group_size(config)

    def empty(*shape):
        return _empty(shape, store, gs)

    wqkv, wo, w13, w2 = empty(L, QD + 2 * KV, C), empty(L, C, QD), empty(L, 2 * H, C), empty(L, C, H)
    rms_att, rms_ffn = np.empty((L, C), np.float32), np.empty((L, C), np.float32)
    tok_emb, rms_final = empty(V, C), np.empty(C, np.float32)

    def take(out, name, shape, heads=None):
        tensors.into(out, name, shape, allow_nonfinite, heads)

    take(tok_emb, "model.embed_tokens.weight", (V, C))
    take(rms_final, "model.norm.weight", (C,))
    for i in range(L):
        p = f"model.layers.{i}."
        take(_part(wqkv, i, slice(0, QD)), p + "self_attn.q_proj.weight", (QD, C), config.n_heads)
        take(_part(wqkv, i, slice(QD, QD + KV)), p + "self_attn.k_proj.weight", (KV, C), config.n_kv_heads)
        take(_part(wqkv, i, slice(QD + KV, None)), p + "self_attn.v_proj.weight", (KV, C))
        take(_part(wo, i), p + "self_attn.o_proj.weight", (C, QD))
        take(_part(w13, i, slice(0, H)), p + "mlp.gate_proj.weight", (H, C))
        take(_part(w13, i, slice(H, None)), p + "mlp.up_proj.weight", (H, C))
        take(_part(w2, i), p + "mlp.down_proj.weight", (C, H))
        take(rms_att[i], p + "input_layernorm.weight", (C,))
        take(rms_ffn[i], p + "post_attention_layernorm.weight", (C,))
    if config.shared_classifier:
        wcls = tok_emb
    else:
        if "lm_head.weight" not in files:
            raise LlmpyError(f"{model_dir}: config.json says tie_word_embeddings=false but no shard has "
                             "lm_head.weight: the checkpoint is incomplete")
        wcls = empty(V, C)
        take(wcls, "lm_head.weight", (V, C))
    weights = {
        "tok_emb": tok_emb, "rms_att": rms_att, "rms_ffn": rms_ffn, "rms_final": rms_final, "wcls": wcls,
        "wq": [_part(wqkv, i, slice(0, QD)) for i in range(L)],
        "wk": [_part(wqkv, i, slice(QD, QD + KV)) for i in range(L)],
        "wv": [_part(wqkv, i, slice(QD + KV, None)) for i in range(L)], "wo": [_part(wo, i) for i in range(L)],
        "w1": [_part(w13, i, slice(0, H)) for i in range(L)], "w3": [_part(w13, i, slice(H, None)) for i in range(L)],
        "w2": [_part(w2, i) for i in range(L)],
        "packed": {"wqkv": wqkv, "wo": wo, "w13": w13, "w2": w2},
    }
    return config, weights


def _known(name, config):
    if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        return True
    parts = name.split(".", 3)
    return (len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit()
            and int(parts[2]) < config.n_layers and parts[3] in LAYER_TENSORS)


# -----------------------------------------------------------------------------
# the hub

def looks_like_hub_id(spec):
    """owner/name that is not a local path (nor a missing model file: a name ending in .bin)."""
    parts = str(spec).split("/")
    return (len(parts) == 2 and all(parts) and not Path(spec).exists() and not str(spec).startswith((".", "~"))
            and not str(spec).endswith(".bin"))


def hf_snapshot(repo):
    """Local directory of hub repository `repo`'s config, tokenizer and safetensors files, downloaded into the
    Hugging Face cache once (later runs use the cache without the network; HF_HUB_OFFLINE=1 forbids it)."""
    from llmpy.hub import _hub, hf_cached, hf_file

    hint = f"or download {repo} yourself (huggingface-cli download {repo}) and pass its directory"
    config = hf_file(repo, CONFIG, hint)  # fails fast offline, names the cache and HF_HUB_OFFLINE
    hub = _hub()
    from huggingface_hub.utils import EntryNotFoundError

    def optional(filename):  # the cached file, else downloaded; None when the repository has no such file
        cached = hf_cached(repo, filename)
        if cached is not None:
            return cached
        try:
            return Path(hub.hf_hub_download(repo, filename))
        except EntryNotFoundError:
            return None
        except Exception as e:  # offline with a partial cache, a broken connection
            if hub.constants.HF_HUB_OFFLINE:
                return None
            raise LlmpyError(f"downloading {repo}/{filename} failed ({type(e).__name__}: {e}); run again, "
                             f"{hint}") from e

    for filename in (GENERATION_CONFIG, *TOKENIZER_FILES):
        optional(filename)
    index = optional(INDEX)
    if index is not None:
        weight_map = _read_json(index, "").get("weight_map") or {}
        for shard in sorted(set(weight_map.values())):
            if optional(shard) is None:
                raise LlmpyError(f"{repo}: shard {shard} listed in {INDEX} is not on the hub or in the cache; {hint}")
    elif optional(SINGLE) is None:
        raise LlmpyError(f"{repo} has no {SINGLE} (nor {INDEX}): llmpy loads safetensors checkpoints only; {hint}")
    return config.parent
