"""Llama 2 model description: the config (run.c's `Config`) and the table of weights.

A model's weights are a dict name -> array, with llama2.c's names and shapes (L = n_layers,
C = dim, H = hidden_dim, QD = n_heads * head_size, KV = n_kv_heads * head_size, V = vocab_size):

    tok_emb   (V, C)        token embedding table
    rms_att   (L, C)        attention rmsnorm weights
    wq        (L, QD, C)    query   (out, in)
    wk        (L, KV, C)    key
    wv        (L, KV, C)    value
    wo        (L, C, QD)    attention output projection
    rms_ffn   (L, C)        ffn rmsnorm weights
    w1        (L, H, C)     ffn gate
    w2        (L, C, H)     ffn down
    w3        (L, H, C)     ffn up
    rms_final (C,)          final rmsnorm
    wcls      (V, C)        classifier; the same array object as tok_emb when shared

For int8 (llama2.c v2) files the matrices are `QTensor`s instead (int8 values + one fp32 scale per
group of `group_size` consecutive values along the input dimension), indexed per layer the same
way: `weights["wq"][l]` is layer l's query matrix in either case.

The head size is dim / n_heads (so QD = C) for every llama2.c model; a Hugging Face config may give another
(head_dim: e.g. the width-pruned Llama-3.1-Minitron-4B, dim 3072, 32 heads of 128), which llama2.c's header
cannot store: such a config runs for inference only (no llama2.c export, no training).
"""

from dataclasses import dataclass

import numpy as np

from llmpy.errors import LlmpyError

BOS = 1  # run.c: token 1 is <s>, also the sequence delimiter when sampled
EOS = 2  # token 2 is </s>

# order of the matrices inside one layer; the norms are 1-D per layer
LAYER_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass
class LlamaConfig:
    dim: int  # transformer dimension C
    hidden_dim: int  # ffn hidden dimension H
    n_layers: int  # L
    n_heads: int  # query heads NH
    n_kv_heads: int  # key/value heads (< n_heads is grouped-query attention)
    vocab_size: int  # V
    seq_len: int  # maximum sequence length T
    shared_classifier: bool = True  # classifier weights are the token embedding table
    # not stored in llama2.c files (run.c fixes them): training takes them from here; inference uses 1e4 and 1e-5
    rope_theta: float = 10000.0  # RoPE base: pair j of a head turns by pos * theta^(-2j/head_size)
    norm_eps: float = 1e-5  # RMSNorm: x / sqrt(mean(x^2) + eps)
    # Hugging Face checkpoints (llmpy.llama.hf_load); llama2.c files have none of these
    rope_scaling: dict = None  # None, or {"rope_type": "linear" | "llama3", ...}: llmpy/llama/rope.py
    bos_id: int = BOS  # token that starts a sequence (None: the tokenizer adds none)
    eos_ids: tuple = (EOS,)  # tokens that end a generation or a chat turn
    head_dim: int = None  # head size hs when it is not dim // n_heads (Hugging Face's head_dim); None: dim // n_heads

    @property
    def max_seq_len(self):
        """seq_len under the name the trainer reads from every model family's config."""
        return self.seq_len

    @property
    def head_size(self):
        return self.dim // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def q_dim(self):
        """Width QD of the queries and of the attention output (= dim unless head_dim says otherwise)."""
        return self.n_heads * self.head_size

    @property
    def kv_dim(self):
        return self.n_kv_heads * self.head_size

    def validate(self, where="model"):
        """Raise LlmpyError if the sizes cannot describe a Llama (e.g. a corrupt header)."""
        sizes = {"dim": self.dim, "hidden_dim": self.hidden_dim, "n_layers": self.n_layers, "n_heads": self.n_heads,
                 "n_kv_heads": self.n_kv_heads, "vocab_size": self.vocab_size, "seq_len": self.seq_len}
        if self.head_dim is not None:
            sizes["head_dim"] = self.head_dim
        bad = [f"{k}={v}" for k, v in sizes.items() if v <= 0]
        if bad:
            raise LlmpyError(f"{where}: header sizes must be positive, got {', '.join(bad)}: "
                             "the file is not a llama2.c model or is corrupt")
        if self.head_dim is not None:
            if self.n_heads % self.n_kv_heads or self.head_dim % 2:
                raise LlmpyError(f"{where}: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
                                 f" or head_dim={self.head_dim} is odd (RoPE turns pairs of values)")
        elif self.dim % self.n_heads or self.n_heads % self.n_kv_heads or self.head_size % 2:
            raise LlmpyError(f"{where}: dim={self.dim}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads} do not "
                             "divide evenly into heads of even size: the file is not a llama2.c model or is corrupt")


def weight_shapes(config):
    """name -> shape of every weight, in the table above."""
    L, C, H, V = config.n_layers, config.dim, config.hidden_dim, config.vocab_size
    KV, QD = config.kv_dim, config.q_dim
    return {
        "tok_emb": (V, C),
        "rms_att": (L, C),
        "wq": (L, QD, C),
        "wk": (L, KV, C),
        "wv": (L, KV, C),
        "wo": (L, C, QD),
        "rms_ffn": (L, C),
        "w1": (L, H, C),
        "w2": (L, C, H),
        "w3": (L, H, C),
        "rms_final": (C,),
        "wcls": (V, C),
    }


def count_parameters(config):
    """Number of stored parameters (the classifier counted once when shared)."""
    shapes = weight_shapes(config)
    n = sum(int(np.prod(s)) for name, s in shapes.items() if name != "wcls")
    return n if config.shared_classifier else n + int(np.prod(shapes["wcls"]))


def random_weights(config, rng, scale=0.02):
    """Random fp32 weights (tests and benchmarks); norms near 1 like a trained model's."""
    weights = {}
    for name, shape in weight_shapes(config).items():
        if name == "wcls" and config.shared_classifier:
            continue
        w = rng.standard_normal(shape, dtype=np.float32)
        if name.startswith("rms"):
            weights[name] = 1.0 + 0.1 * w
        else:
            w *= scale
            weights[name] = w
    weights["wcls"] = weights["tok_emb"] if config.shared_classifier else weights["wcls"]
    return weights
