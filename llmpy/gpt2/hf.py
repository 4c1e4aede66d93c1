"""OpenAI's GPT-2 from the Hugging Face hub into llm.c's layout, and llm.c checkpoints out to HF.

HF's GPT-2 (transformers' GPT2LMHeadModel, `model.safetensors`) names its tensors
    wte.weight (V,C)  wpe.weight (maxT,C)  ln_f.{weight,bias}
    h.{l}.ln_1.*  h.{l}.attn.c_attn.{weight (C,3C), bias}  h.{l}.attn.c_proj.{weight (C,C), bias}
    h.{l}.ln_2.*  h.{l}.mlp.c_fc.{weight (C,4C), bias}    h.{l}.mlp.c_proj.{weight (4C,C), bias}
sometimes under a "transformer." prefix, plus the attention-mask buffers h.{l}.attn.bias / masked_bias
(not parameters: skipped) and lm_head.weight (tied to wte: skipped). Its Conv1D layers store weights as
(in, out), llm.c as (out, in), so the four projection weights are transposed. llm.c pads the vocab to a
multiple of 128 (50257 -> 50304) with zero rows.

    config, params = load_pretrained("gpt2")   # download (huggingface_hub, cached) + convert + llm.c copy
    export_hf(out_dir, config, params)         # model.safetensors + config.json for transformers

Not handled: other architectures (see llmpy.llama.hf for Llama), sharded (multi-file) checkpoints.
"""

import json
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write
from llmpy.formats.finite import check_finite
from llmpy.formats.llmc import load_checkpoint, named_tensors, save_checkpoint
from llmpy.formats.safetensors import read_safetensors, write_safetensors
from llmpy.gpt2.model import (
    GPT2_PADDED_VOCAB_SIZE,
    GPT2_VOCAB_SIZE,
    GPT2Config,
    NamedViews,
    num_parameters,
    param_shapes,
)
from llmpy.hub import models_cache_dir

HF_REPOS = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
            "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}
LLMC_NAMES = {"gpt2": "gpt2_124M.bin", "gpt2-medium": "gpt2_350M.bin", "gpt2-large": "gpt2_774M.bin",
              "gpt2-xl": "gpt2_1558M.bin"}
HEADS_BY_CHANNELS = {768: 12, 1024: 16, 1280: 20, 1600: 25}  # OpenAI's four sizes
VOCAB_PAD = 128
LAYERNORM_EPS = 1e-5
EOT_TOKEN = 50256
HF_SIZE_KEYS = ("n_head", "n_embd", "n_layer", "vocab_size", "n_positions")  # ints when present in config.json
SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# llm.c name -> (HF name inside block l or at the top, transpose?)
BLOCK_MAP = {"ln1w": ("ln_1.weight", False), "ln1b": ("ln_1.bias", False),
             "qkvw": ("attn.c_attn.weight", True), "qkvb": ("attn.c_attn.bias", False),
             "attprojw": ("attn.c_proj.weight", True), "attprojb": ("attn.c_proj.bias", False),
             "ln2w": ("ln_2.weight", False), "ln2b": ("ln_2.bias", False),
             "fcw": ("mlp.c_fc.weight", True), "fcb": ("mlp.c_fc.bias", False),
             "fcprojw": ("mlp.c_proj.weight", True), "fcprojb": ("mlp.c_proj.bias", False)}
TOP_MAP = {"wpe": "wpe.weight", "lnfw": "ln_f.weight", "lnfb": "ln_f.bias"}


def padded_vocab(V):
    return GPT2_PADDED_VOCAB_SIZE if V == GPT2_VOCAB_SIZE else -(-V // VOCAB_PAD) * VOCAB_PAD


def hf_to_llmc(tensors, num_heads=None, source="the safetensors file"):
    """(GPT2Config, flat float32 params) from HF GPT-2 tensors {name: array}."""
    t = {}
    for name, array in tensors.items():
        name = name.removeprefix("transformer.")
        if name.endswith(SKIPPED_SUFFIXES) or name == "lm_head.weight":
            continue
        t[name] = array
    if "wte.weight" not in t or "wpe.weight" not in t:
        raise LlmpyError(f"{source} has no wte.weight / wpe.weight: it is not a Hugging Face GPT-2 model")
    if t["wte.weight"].ndim != 2 or t["wpe.weight"].ndim != 2:
        raise LlmpyError(f"{source}: wte.weight {t['wte.weight'].shape} and wpe.weight {t['wpe.weight'].shape} must "
                         "be matrices: it is not a Hugging Face GPT-2 model")
    V, C = t["wte.weight"].shape
    maxT = t["wpe.weight"].shape[0]
    L = len({n.split(".")[1] for n in t if n.startswith("h.")})
    NH = num_heads or HEADS_BY_CHANNELS.get(C)
    if NH is None:
        raise LlmpyError(f"{source}: cannot tell the number of heads for C={C}; keep its config.json beside it")
    try:
        config = GPT2Config(maxT, V, padded_vocab(V), L, NH, C)
    except ValueError as e:
        raise LlmpyError(f"{source}: the tensors do not describe a GPT-2 ({e})") from None
    params = np.zeros(num_parameters(config), dtype=np.float32)
    p = NamedViews(params, param_shapes(config))

    def take(name, shape):
        if name not in t:
            raise LlmpyError(f"{source} lacks tensor {name}: not a complete GPT-2 model")
        a = t[name]
        if a.dtype.kind != "f":
            raise LlmpyError(f"{source}: {name} is {a.dtype}, not floating point: not a GPT-2 model's weights")
        if a.shape != shape:
            raise LlmpyError(f"{source}: {name} has shape {a.shape}, expected {shape} for L={L} C={C} V={V}")
        return a.astype(np.float32, copy=False)

    p.wte[:V] = take("wte.weight", (V, C))
    for ours, theirs in TOP_MAP.items():
        getattr(p, ours)[...] = take(theirs, getattr(p, ours).shape)
    for l in range(L):
        for ours, (theirs, transpose) in BLOCK_MAP.items():
            dest = getattr(p, ours)[l]
            shape = dest.shape[::-1] if transpose else dest.shape
            src = take(f"h.{l}.{theirs}", shape)
            dest[...] = src.T if transpose else src
    return config, params


def llmc_to_hf(config, params):
    """HF GPT-2 tensors {name: float32 array} (no prefix, vocab unpadded, Conv1D layout) from llm.c params."""
    p = NamedViews(np.asarray(params, dtype=np.float32), param_shapes(config))
    out = {"wte.weight": np.ascontiguousarray(p.wte[:config.vocab_size])}
    for ours, theirs in TOP_MAP.items():
        out[theirs] = np.ascontiguousarray(getattr(p, ours))
    for l in range(config.num_layers):
        for ours, (theirs, transpose) in BLOCK_MAP.items():
            src = getattr(p, ours)[l]
            out[f"h.{l}.{theirs}"] = np.ascontiguousarray(src.T if transpose else src)
    return out


def hf_config_json(config):
    """transformers' GPT2Config for an llm.c model (GELU tanh, eps 1e-5, no dropout, tied lm_head)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.max_seq_len, "n_ctx": config.max_seq_len, "n_embd": config.channels,
            "n_layer": config.num_layers, "n_head": config.num_heads, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": LAYERNORM_EPS, "resid_pdrop": 0.0,
            "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02, "bos_token_id": EOT_TOKEN,
            "eos_token_id": EOT_TOKEN, "tie_word_embeddings": True, "torch_dtype": "float32"}


def export_hf(out_dir, config, params):
    """Write OUT/model.safetensors + OUT/config.json (each through a temporary name)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LlmpyError(f"{out_dir} is a file; --to hf writes a directory: choose another output name")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir / "model.safetensors", llmc_to_hf(config, params), metadata={"format": "pt"})
    atomic_write(out_dir / "config.json", [json.dumps(hf_config_json(config), indent=2).encode()])
    return out_dir


def read_hf_config(path):
    """The dict in a Hugging Face config.json; LlmpyError if it is not JSON, not an object, or has ill-typed sizes."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise LlmpyError(f"cannot read {path}: {e.strerror or e}") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise LlmpyError(f"{path} is not JSON ({e}): give the config.json that came with the model, or delete it "
                         "(the sizes are then taken from the tensors)") from e
    except RecursionError:
        raise LlmpyError(f"{path} is JSON nested too deeply to be a model config") from None
    if not isinstance(config, dict):
        raise LlmpyError(f"{path} holds a JSON {type(config).__name__}, not an object: it is not a model config")
    for key in HF_SIZE_KEYS:
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise LlmpyError(f"{path}: {key} is {str(value)[:40]!r}, not a positive integer: the config is corrupt")
    return config


def load_hf_dir(path, allow_nonfinite=False):
    """(config, params) from a directory (or file) holding model.safetensors [+ config.json].

    The parameters are converted into a new array (nothing stays memory-mapped) and must be finite unless
    allow_nonfinite (then a warning)."""
    path = Path(path)
    st = path / "model.safetensors" if path.is_dir() else path
    if not st.is_file():
        raise LlmpyError(f"{st} not found: give a Hugging Face GPT-2 directory with model.safetensors")
    hf_config = {}
    cfg_file = st.parent / "config.json"
    if cfg_file.is_file():
        hf_config = read_hf_config(cfg_file)
    tensors, _ = read_safetensors(st)
    config, params = hf_to_llmc(tensors, hf_config.get("n_head"), str(st))
    for key, ours in (("n_embd", config.channels), ("n_layer", config.num_layers), ("vocab_size", config.vocab_size)):
        if hf_config.get(key, ours) != ours:
            raise LlmpyError(f"{cfg_file} says {key}={hf_config[key]} but {st} holds {ours}: the two files do not "
                             "belong together")
    check_finite(st, named_tensors(config, params), allow_nonfinite, "download or convert the model again")
    return config, params


def download(name):
    """Path of the HF snapshot's model.safetensors (with its config.json), from the Hugging Face cache or fetched
    into it; offline, one request and an error naming the caches (llmpy.hub.hf_file)."""
    from llmpy.hub import hf_file

    converted = models_cache_dir() / LLMC_NAMES[name]
    hint = (f"or give a local llm.c checkpoint such as {LLMC_NAMES[name]} (llmpy keeps its converted copy at "
            f"{converted})")
    hf_file(HF_REPOS[name], "config.json", hint)
    return hf_file(HF_REPOS[name], "model.safetensors", hint)


def load_pretrained(name, verbose=True):
    """OpenAI's GPT-2 `name` as (config, params): from llmpy's converted copy if present, else downloaded,
    converted and saved as an llm.c checkpoint ($XDG_CACHE_HOME/llmpy/models/gpt2_124M.bin, ...)."""
    if name not in HF_REPOS:
        raise LlmpyError(f"unknown GPT-2 name {name!r}: choose one of {', '.join(HF_REPOS)}")
    local = models_cache_dir() / LLMC_NAMES[name]
    if local.is_file():
        if verbose:
            print(f"loading {name} from {local}")
        return load_checkpoint(local)
    st = download(name)
    config, params = load_hf_dir(st.parent)
    local.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(local, config, params)
    if verbose:
        print(f"converted {st} to the llm.c checkpoint {local}")
    return config, params


def export_cli(args):
    """`llmpy export CKPT OUT --to hf` for an llm.c GPT-2 checkpoint (called by llmpy.cli.export)."""
    if args.to != "hf":
        raise LlmpyError(f"{args.input} is an llm.c GPT-2 checkpoint: it exports only --to hf (got --to {args.to})")
    config, params = load_checkpoint(args.input)
    out = export_hf(args.output, config, params)
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'} (GPT-2 L={config.num_layers} "
          f"C={config.channels} NH={config.num_heads} V={config.vocab_size}); load with "
          f"transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})")
    return 0
