"""The model families the trainer drives: GPT-2 (llm.c's layout) and Llama 2 (llama2.c's), one interface.

    family, params, desc = init_family(cfg, data_vocab, rng)   # from -e (a name, a shape or a model file)
    family, params = load_family(path)                          # a run's checkpoint, for -y 1
    model = family.build(params, B, T)     # forward(x, y) -> loss, backward(loss_scale), zero_grad(), params,
                                           # grads, acts["losses"]: GPT2 and Llama share this interface
    family.num_parameters, family.decay_ranges(), family.flops_per_token(T), family.describe()
    family.save(path, params, dtype)       # llm.c checkpoint (GPT-2) or llama2.c v0 file (Llama)
    family.sample(params, n, temperature, top_k, top_p, coin)   # n token ids after the start token

The loop (llmpy/train/loop.py) only talks to this object, so one loop trains both. `-e` decides the family:
GPT-2 for "", dN, gpt2[-medium|-large|-xl] and llm.c checkpoints; Llama for llama2.c's stories15M /
stories42M / stories110M shapes, `llama:d<dim>l<layers>h<heads>[kv<kv_heads>]`, and llama2.c model files
(v0/v1; an int8 v2 file cannot be trained). A Llama made from a shape takes its vocabulary from the data's
tokenizer (data_vocab), its context from --max-seq-len (llama2.c's 256 or 1024 for the stories shapes).

Not handled: llama2.c checkpoints of RoPE theta or norm eps other than 1e4 and 1e-5 (the file stores
neither), bfloat16 Llama checkpoints (a llama2.c v0 file is float32).
"""

import re
from pathlib import Path

from llmpy.errors import LlmpyError
from llmpy.formats import sniff
from llmpy.gpt2 import model as gpt2
from llmpy.llama import train_model as llama
from llmpy.train.config import HF_NAMES

VOCAB_PAD = 128   # a from-scratch GPT-2 pads its vocab to a multiple of this (50257 -> 50304)
# llama2.c's TinyStories models: name -> (dim, n_layers, n_heads, max_seq_len)
LLAMA_SHAPES = {"stories15M": (288, 6, 6, 256), "stories42M": (512, 8, 8, 1024), "stories110M": (768, 12, 12, 1024)}
LLAMA_SPEC = re.compile(r"^llama:d(\d+)l(\d+)h(\d+)(?:kv(\d+))?$")


def padded_vocab(V):
    return gpt2.GPT2_PADDED_VOCAB_SIZE if V == gpt2.GPT2_VOCAB_SIZE else -(-V // VOCAB_PAD) * VOCAB_PAD


def llmc_flops_per_token(num_params, num_layers, channels, T):
    """llm.c's estimate: 6 N for the weights' forward + backward, 6 L C T for attention."""
    return 6 * num_params + 6 * num_layers * channels * T


def start_token(vocab_size):
    """The token a sample starts from: GPT-2's <|endoftext|> for its vocab, else llama2.c's BOS (id 1) when it
    exists, else 0."""
    if vocab_size == gpt2.GPT2_VOCAB_SIZE:
        return gpt2.GPT2_VOCAB_SIZE - 1
    return 1 if vocab_size > 1 else 0


class GPT2Family:
    """GPT-2 as llm.c: llmpy.gpt2.model, checkpoints in llm.c's format (llmpy.formats.llmc)."""

    name, key = "GPT-2", "gpt2"   # key: the family as llmpy.data.vocab.check_data_fits names it

    def __init__(self, config):
        self.config = config
        self.vocab_size = config.vocab_size
        self.max_seq_len = config.max_seq_len
        self.num_parameters = gpt2.num_parameters(config)

    def build(self, params, B, T):
        return gpt2.GPT2(self.config, params, B, T)

    def decay_ranges(self):
        return gpt2.matrix_param_ranges(self.config)

    def flops_per_token(self, T):
        return llmc_flops_per_token(self.num_parameters, self.config.num_layers, self.config.channels, T)

    def describe(self):
        c = self.config
        return (f"L={c.num_layers} C={c.channels} NH={c.num_heads} V={c.vocab_size} Vp={c.padded_vocab_size} "
                f"maxT={c.max_seq_len}")

    def check_save_dtype(self, dtype):
        pass   # llm.c checkpoints come in float32 and bfloat16

    def save(self, path, params, dtype="float32"):
        from llmpy.formats.llmc import save_checkpoint
        save_checkpoint(path, self.config, params, dtype)

    def sample(self, params, n, temperature, top_k, top_p, coin):
        from llmpy.gpt2.generate import generate
        tokens = generate(self.config, params, [start_token(self.vocab_size)], n, temperature=temperature,
                          top_k=top_k, top_p=top_p, coin=coin)
        return tokens[1:]


class LlamaFamily:
    """Llama 2 as llama2.c: llmpy.llama.train_model, checkpoints as llama2.c v0 files (what `llmpy run` and
    `llmpy export` read), sampled through llmpy.llama.inference's Transformer."""

    name, key = "Llama", "llama"

    def __init__(self, config):
        if config.q_dim != config.dim:  # llama2.c checkpoints and the training kernels: heads of dim / n_heads
            raise LlmpyError(f"Llama config: head_dim {config.head_size} * n_heads {config.n_heads} != dim "
                             f"{config.dim}: training (and its llama2.c checkpoints) needs heads of dim / n_heads; "
                             "such a model runs for inference only")
        llama.check_config(config)
        self.config = config
        self.vocab_size = config.vocab_size
        self.max_seq_len = config.seq_len
        self.num_parameters = llama.num_parameters(config)

    def build(self, params, B, T):
        return llama.Llama(self.config, params, B, T)

    def decay_ranges(self):
        return llama.matrix_param_ranges(self.config)

    def flops_per_token(self, T):
        return llmc_flops_per_token(self.num_parameters, self.config.n_layers, self.config.dim, T)

    def describe(self):
        c = self.config
        return (f"Llama dim={c.dim} hidden={c.hidden_dim} L={c.n_layers} NH={c.n_heads} NKV={c.n_kv_heads} "
                f"V={c.vocab_size} maxT={c.seq_len}{'' if c.shared_classifier else ' (unshared classifier)'}")

    def check_save_dtype(self, dtype):
        if dtype != "float32":
            raise LlmpyError(f"a Llama run's checkpoints are llama2.c v0 files, float32 only: drop --save-dtype "
                             f"{dtype} (export a copy afterwards: `llmpy export model_XXXXXXXX.bin OUT --to v2`)")

    def weights(self, params):
        """llmpy.llama.model's weights dict of views into params (wcls is tok_emb when shared)."""
        w = dict(gpt2.NamedViews(params, llama.param_shapes(self.config)).items())
        if self.config.shared_classifier:
            w["wcls"] = w["tok_emb"]
        return w

    def save(self, path, params, dtype="float32"):
        from llmpy.formats.llama2c import write_llama2c
        self.check_save_dtype(dtype)
        write_llama2c(path, self.config, self.weights(params), 0)

    def sample(self, params, n, temperature, top_k, top_p, coin):
        from llmpy.llama.inference import Transformer
        from llmpy.sampler import sample_token
        if n < 1:
            return []
        transformer = Transformer(self.config, self.weights(params), max_rows=1, max_seq_len=n + 1)
        token = start_token(self.vocab_size)
        logits = transformer.prefill([token])[0]
        out = []
        for pos in range(1, n + 1):
            token = sample_token(logits, temperature, top_k, top_p, coin)
            out.append(token)
            if pos < n:
                logits = transformer.forward_token(token, pos, 0)
        return out


# ----------------------------------------------------------------------------
# which family, from -e or from a checkpoint file

def is_llama_init(init):
    return init in LLAMA_SHAPES or init.startswith("llama:")


def llama_config_from_name(init, vocab_size, max_seq_len):
    """A from-scratch LlamaConfig for stories15M/42M/110M or llama:d<dim>l<layers>h<heads>[kv<kv_heads>]."""
    if init in LLAMA_SHAPES:
        dim, n_layers, n_heads, max_seq_len = LLAMA_SHAPES[init]
        n_kv_heads = None
    else:
        m = LLAMA_SPEC.match(init)
        if m is None:
            raise LlmpyError(f"-e {init}: a Llama shape is written llama:d<dim>l<layers>h<heads>[kv<kv_heads>], "
                             f"e.g. -e llama:d64l2h4kv2 (or one of {', '.join(LLAMA_SHAPES)})")
        dim, n_layers, n_heads = (int(m.group(i)) for i in (1, 2, 3))
        n_kv_heads = int(m.group(4)) if m.group(4) else None
        if min(dim, n_layers, n_heads, n_heads if n_kv_heads is None else n_kv_heads) < 1:
            raise LlmpyError(f"-e {init}: dim, layers, heads and kv heads must be >= 1")
    return llama.make_config(dim, n_layers, n_heads, vocab_size, max_seq_len, n_kv_heads=n_kv_heads)


def load_family(path):
    """(family, params) from a model file: an llm.c GPT-2 checkpoint or a llama2.c v0/v1 file."""
    kind = sniff.identify_path(path)
    if kind is not None and kind.key == "llama2c":
        from llmpy.formats.llama2c import read_header, read_llama2c
        version = read_header(path)[0]
        if version == 2:
            raise LlmpyError(f"{path} is a llama2.c v2 file (int8 weights): training needs float32 weights. Start "
                             f"from the v0/v1 file it was quantized from, or dequantize it first (losing what "
                             f"int8 lost): llmpy export {path} model_v0.bin --to v0")
        config, weights, _, _ = read_llama2c(path)
        family = LlamaFamily(config)
        return family, llama.params_from_weights(config, weights)
    from llmpy.formats.llmc import load_checkpoint
    config, params = load_checkpoint(path)
    return GPT2Family(config), params


def init_family(cfg, data_vocab, rng):
    """(family, params, description) from -e: "" (a small GPT-2), dN, a GPT-2 name, a Llama shape or a model
    file. data_vocab: the vocabulary of the data's tokenizer (None: unknown; a Llama shape then takes
    --vocab-size)."""
    init = cfg.init
    if init in HF_NAMES:
        from llmpy.gpt2.hf import load_pretrained
        config, params = load_pretrained(init)
        return GPT2Family(config), params, f"OpenAI {init}"
    if is_llama_init(init):
        V = data_vocab or cfg.vocab_size
        family = LlamaFamily(llama_config_from_name(init, V, cfg.max_seq_len))
        return family, llama.init_params(family.config, rng), f"from scratch ({init}, seed {cfg.seed})"
    if init == "" or (init.startswith("d") and init[1:].isdigit()):
        V = cfg.vocab_size
        if init:
            try:
                config = gpt2.GPT2Config.from_depth(init, cfg.max_seq_len, V, padded_vocab(V))
            except ValueError as e:
                raise LlmpyError(str(e)) from None
        else:
            config = gpt2.GPT2Config(cfg.max_seq_len, V, padded_vocab(V), cfg.num_layers, cfg.num_heads,
                                     cfg.channels)
        return GPT2Family(config), gpt2.init_params(config, rng), f"from scratch ({init or 'custom'}, seed {cfg.seed})"
    if not Path(init).is_file():
        raise LlmpyError(f"-e {init}: not a file, a depth (d6, d12, d24, d36, d48), a GPT-2 name "
                         f"({', '.join(HF_NAMES)}), a Llama shape ({', '.join(LLAMA_SHAPES)}, llama:d64l2h4kv2)")
    family, params = load_family(init)
    return family, params, f"{family.name} checkpoint {init}"


def data_vocab_size(pattern):
    """The vocabulary of the tokenizer that made the shards of `pattern` (llmpy prepro's record beside them),
    or None when nothing says."""
    from llmpy.data.vocab import data_tokenizer
    tok = data_tokenizer(pattern)
    return None if tok is None else tok.vocab_size
