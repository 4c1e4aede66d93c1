"""A trainable Llama 2, laid out like llmpy/gpt2/model.py: one flat parameter buffer cut into llama2.c's
weights (named views, in the order of a v0 file), activations preallocated for a (B,T) batch, forward and
backward that call the layers in llmpy/llama/layers.py.

    config = make_config(dim=288, n_layers=6, n_heads=6, vocab_size=32000, max_seq_len=256)
    model = Llama(config, init_params(config, rng))   # params: flat float32, llama2.c's v0 order
    loss = model.forward(inputs, targets)              # inputs, targets (B,T) int32
    model.zero_grad(); model.backward()                # model.grads: flat, the same views
    adamw.step(model.params, model.grads)              # llmpy.optim
    write_llama2c(path, config, model.weights(), 0)    # a llama2.c file is a write of the views

The interface is GPT2's (forward(x, y), backward(loss_scale=...), zero_grad(), params, grads, acts["losses"],
logits(), resize), so the one trainer loop drives both families.

What this does not handle: dropout (llama2.c trains its small models without), mixed precision (one dtype
throughout, float32 for training), batch shapes other than the one the activations were sized for (call
`resize`), a classifier padded past the vocabulary (V need not be a multiple of anything).
"""

import math

import numpy as np

from llmpy.backend import get_array_module, matmul_acc
from llmpy.errors import LlmpyError
from llmpy.gpt2.model import NamedViews
from llmpy.llama import layers
from llmpy.llama.layers import linear_backward, linear_forward
from llmpy.llama.model import LlamaConfig, weight_shapes

INIT_STD = 0.02
MULTIPLE_OF = 32  # llama2.c's train.py (its ModelArgs default is 256; both give stories15M's 768 for dim 288)
MATRIX_PARAMS = ("tok_emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls")


# ----------------------------------------------------------------------------
# config and parameter table

def hidden_dim_for(dim, multiple_of=MULTIPLE_OF):
    """llama2.c's model.py rule: 2/3 of 4*dim (SwiGLU has three matrices where GELU's MLP has two, so the
    same parameter count), rounded up to a multiple of multiple_of."""
    hidden_dim = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


def make_config(dim, n_layers, n_heads, vocab_size, max_seq_len, n_kv_heads=None, hidden_dim=None,
                multiple_of=MULTIPLE_OF, rope_theta=10000.0, norm_eps=1e-5, shared_classifier=True):
    """A LlamaConfig from llama2.c's ModelArgs: n_kv_heads defaults to n_heads, hidden_dim to hidden_dim_for."""
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    hidden_dim = hidden_dim_for(dim, multiple_of) if hidden_dim is None else hidden_dim
    config = LlamaConfig(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len,
                         shared_classifier, rope_theta=float(rope_theta), norm_eps=float(norm_eps))
    check_config(config)
    return config


def check_config(config):
    """LlmpyError (a ValueError) naming the fix when the sizes cannot make a Llama's heads."""
    C, NH, NKV = config.dim, config.n_heads, config.n_kv_heads
    if NH > 0 and NKV > 0 and C > 0:
        if NH % NKV:
            raise LlmpyError(f"Llama config: n_heads={NH} is not a multiple of n_kv_heads={NKV} (each key/value "
                             "head serves a whole group of query heads): choose n_kv_heads among the divisors of "
                             f"{NH}: {', '.join(str(d) for d in range(1, NH + 1) if NH % d == 0)}")
        if C % NH:
            raise LlmpyError(f"Llama config: dim={C} is not divisible by n_heads={NH}: choose a dim that is a "
                             f"multiple of {NH} (e.g. {NH * max(2, 2 * round(C / NH / 2))}) or another n_heads")
        if (C // NH) % 2:
            raise LlmpyError(f"Llama config: head size dim/n_heads = {C // NH} is odd, and RoPE turns pairs of "
                             f"values: choose dim and n_heads with an even dim/n_heads (e.g. dim={NH * (C // NH + 1)})")
    config.validate("Llama config")
    if not (config.rope_theta > 0 and config.norm_eps > 0):
        raise LlmpyError(f"Llama config: rope_theta ({config.rope_theta}) and norm_eps ({config.norm_eps}) must be "
                         "positive (llama2.c uses 10000 and 1e-5)")


def param_shapes(config):
    """name -> shape of every stored parameter, in llama2.c's v0 order; wcls only when not shared."""
    shapes = weight_shapes(config)
    if config.shared_classifier:
        del shapes["wcls"]
    return shapes


def num_parameters(config):
    return sum(math.prod(s) for s in param_shapes(config).values())


def matrix_param_ranges(config):
    """[start, stop) of the 2-D weights in the flat buffer (embedding, linears, classifier): the ones weight
    decay applies to, as llama2.c's train.py decays every parameter of 2 or more dimensions (not the norms).
    Neighbours are merged (wq..wo, w1..w3 make one range each), so AdamW makes one pass per range."""
    ranges, offset = [], 0
    for name, shape in param_shapes(config).items():
        n = math.prod(shape)
        if name in MATRIX_PARAMS:
            if ranges and ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], offset + n)
            else:
                ranges.append((offset, offset + n))
        offset += n
    return ranges


def init_params(config, rng, dtype=np.float32):
    """llama2.c's init as its model.py intends: linears and the embedding N(0, 0.02), norm weights 1, and
    the two projections back into the residual stream (wo, w2) N(0, 0.02/sqrt(2L)). llama2.c's code matches
    'w3.weight' where it means w2 (the down projection into the stream; llama2.c issue #579): we scale w2.
    `rng` is a np.random.Generator."""
    params = np.zeros(num_parameters(config), dtype=dtype)
    p = NamedViews(params, param_shapes(config))
    residual_std = INIT_STD / math.sqrt(2 * config.n_layers)
    for name, view in p.items():
        if name.startswith("rms"):
            view[...] = 1.0
        else:
            view[...] = rng.normal(0.0, residual_std if name in ("wo", "w2") else INIT_STD, view.shape)
    return params


def params_from_weights(config, weights, dtype=np.float32):
    """The flat buffer from a weights dict (llmpy.llama.model's table, e.g. read_llama2c's fp32 weights)."""
    params = np.zeros(num_parameters(config), dtype=dtype)
    for name, view in NamedViews(params, param_shapes(config)).items():
        view[...] = weights[name]
    return params


def activation_shapes(config, B, T):
    """The forward pass's saved activations, name -> shape."""
    C, L, NH, V, H, KV = (config.dim, config.n_layers, config.n_heads, config.vocab_size, config.hidden_dim,
                          config.kv_dim)
    return {
        "encoded": (B, T, C),                       # token embeddings: the residual stream entering layer 0
        "ln1": (L, B, T, C), "ln1_rstd": (L, B, T),  # rmsnorm before attention (rms_att)
        "q": (L, B, T, C), "k": (L, B, T, KV), "v": (L, B, T, KV),  # q and k after RoPE
        "att": (L, B, NH, T, T),                    # softmaxed attention weights
        "atty": (L, B, T, C),                       # attention output, heads side by side, before wo
        "residual2": (L, B, T, C),                  # residual + wo(atty)
        "ln2": (L, B, T, C), "ln2_rstd": (L, B, T),  # rmsnorm before the ffn (rms_ffn)
        "h1": (L, B, T, H), "h3": (L, B, T, H),     # w1 x (gate), w3 x (up)
        "hb": (L, B, T, H),                         # silu(h1) * h3, before w2
        "residual3": (L, B, T, C),                  # residual2 + w2(hb): the stream leaving the layer
        "lnf": (B, T, C), "lnf_rstd": (B, T),       # final rmsnorm
        "logits": (B, T, V),  # the fused path turns these into dlogits in place during backward
        "probs": (B, T, V),   # plain path only
        "losses": (B, T),
        "lse": (B, T),        # fused path only: log-sum-exp of each row's logits
    }


def grad_activation_shapes(config, B, T):
    """Gradient scratch for backward: one layer's worth, reused down the stack."""
    C, H, KV = config.dim, config.hidden_dim, config.kv_dim
    return {
        "dresidual": (B, T, C),   # the residual stream's gradient, carried from top to bottom
        "dln": (B, T, C), "datty": (B, T, C),
        "dq": (B, T, C), "dk": (B, T, KV), "dv": (B, T, KV),
        "dhb": (B, T, H), "dh1": (B, T, H), "dh3": (B, T, H),
        "datt": (B, config.n_heads, T, T),
        "heads": (B, T, C),       # fused path only: train_kernels.attention_backward's head-major copies
        "dlogits": (B, T, config.vocab_size),  # plain path only
    }


def _alloc(shapes, xp, dtype, skip=()):
    return {name: xp.zeros(shape, dtype=dtype) for name, shape in shapes.items() if name not in skip}


def _flat(x):
    # (..., D) -> (N, D), a view: the rows of a batch as one matrix for a GEMM
    return x.reshape(-1, x.shape[-1])


# ----------------------------------------------------------------------------
# the model

class Llama:
    """The model: parameters, gradients and activations, each a flat or preallocated buffer.

    `fused=True` (the default for float32 NumPy arrays when Numba is installed) runs the memory-bound layers
    through llmpy/llama/train_kernels.py and the softmax + cross-entropy through llmpy/gpt2/kernels.py, keeping
    one (B,T,V) buffer for logits and dlogits; `fused=False` runs the plain layers of llmpy/llama/layers.py,
    which read like the math and work on any array module.
    """

    def __init__(self, config, params, B=None, T=None, fused=None):
        check_config(config)
        xp = get_array_module(params)
        n = num_parameters(config)
        if params.ndim != 1 or params.size != n:
            raise ValueError(f"params must be a flat array of {n} elements for this config, got shape {params.shape}")
        self.config = config
        self.xp = xp
        self.params = params
        self.p = NamedViews(params, param_shapes(config))
        self.grads = None
        self.g = None
        if fused is None:
            from llmpy.gpt2 import kernels
            fused = xp is np and kernels.AVAILABLE and params.dtype == np.float32
        self.fused = fused
        cos, sin = layers.rope_tables(config.head_size, config.seq_len, config.rope_theta, params.dtype)
        self.rope_cos, self.rope_sin = xp.asarray(cos), xp.asarray(sin)  # (maxT, hs/2)
        self.B = self.T = None
        self.acts = self.dacts = None
        self.inputs = self.targets = None
        self.mean_loss = None
        if B is not None:
            self.resize(B, T)

    # -- buffers ---------------------------------------------------------------

    def resize(self, B, T):
        """(Re)allocate the activations for batches of shape (B,T)."""
        if T > self.config.seq_len:
            raise ValueError(f"sequence length T={T} exceeds the model's max_seq_len {self.config.seq_len}")
        if (B, T) == (self.B, self.T):
            return
        dtype = self.params.dtype
        skip = ("probs",) if self.fused else ("lse",)
        self.acts = _alloc(activation_shapes(self.config, B, T), self.xp, dtype, skip)
        dskip = ("dlogits",) if self.fused else ("heads",)
        self.dacts = _alloc(grad_activation_shapes(self.config, B, T), self.xp, dtype, dskip)
        self.B, self.T = B, T

    def zero_grad(self):
        if self.grads is None:  # allocated lazily: inference never needs them
            self.grads = self.xp.zeros_like(self.params)
            self.g = NamedViews(self.grads, param_shapes(self.config))
        else:
            self.grads.fill(0.0)

    def weights(self):
        """The parameters as llmpy.llama.model's weights dict (views; wcls is tok_emb when shared), what
        llmpy.formats.llama2c.write_llama2c and llmpy.llama.inference.Transformer take."""
        w = dict(self.p.items())
        if self.config.shared_classifier:
            w["wcls"] = w["tok_emb"]
        return w

    # -- forward ---------------------------------------------------------------

    def forward(self, inputs, targets=None):
        """Run the model on inputs (B,T) int32. With targets, return the mean loss (a float);
        without, return None (inference: `self.logits()` holds the logits)."""
        cfg = self.config
        B, T = inputs.shape
        _check_tokens(inputs, "inputs", cfg.vocab_size, self.xp)
        if targets is not None:
            _check_tokens(targets, "targets", cfg.vocab_size, self.xp)
            if targets.shape != inputs.shape:
                raise ValueError(f"targets have shape {targets.shape}, inputs {inputs.shape}")
        self.resize(B, T)
        self.inputs, self.targets = inputs, targets
        p, a = self.p, self.acts
        NH, eps = cfg.n_heads, cfg.norm_eps
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        rmsnorm_forward, rope_forward, swiglu_forward = self._kernels("rmsnorm_forward", "rope_forward",
                                                                      "swiglu_forward")
        attention_forward, embedding_forward = self._kernels("attention_forward", "embedding_forward")

        embedding_forward(a["encoded"], inputs, p.tok_emb)
        for l in range(cfg.n_layers):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            # attention block: residual2 = residual + wo(attention(rope(wq x), rope(wk x), wv x)), x = rmsnorm(residual)
            rmsnorm_forward(a["ln1"][l], a["ln1_rstd"][l], residual, p.rms_att[l], eps)
            linear_forward(a["q"][l], a["ln1"][l], p.wq[l])
            linear_forward(a["k"][l], a["ln1"][l], p.wk[l])
            linear_forward(a["v"][l], a["ln1"][l], p.wv[l])
            rope_forward(a["q"][l], a["q"][l], cos, sin)  # in place: backward needs only the rotated q, k
            rope_forward(a["k"][l], a["k"][l], cos, sin)
            attention_forward(a["atty"][l], a["att"][l], a["q"][l], a["k"][l], a["v"][l], NH)
            _residual_linear(a["residual2"][l], residual, a["atty"][l], p.wo[l])
            # ffn block: residual3 = residual2 + w2(silu(w1 x) * w3 x), x = rmsnorm(residual2)
            rmsnorm_forward(a["ln2"][l], a["ln2_rstd"][l], a["residual2"][l], p.rms_ffn[l], eps)
            linear_forward(a["h1"][l], a["ln2"][l], p.w1[l])
            linear_forward(a["h3"][l], a["ln2"][l], p.w3[l])
            swiglu_forward(a["hb"][l], a["h1"][l], a["h3"][l])
            _residual_linear(a["residual3"][l], a["residual2"][l], a["hb"][l], p.w2[l])
        rmsnorm_forward(a["lnf"], a["lnf_rstd"], a["residual3"][cfg.n_layers - 1], p.rms_final, eps)
        linear_forward(a["logits"], a["lnf"], self._wcls(p))

        if targets is None:
            self.mean_loss = None
            return None
        if self.fused:
            from llmpy.gpt2 import kernels
            kernels.crossentropy_forward(a["losses"], a["lse"], a["logits"], targets, cfg.vocab_size)
        else:
            layers.softmax_crossentropy_forward(a["losses"], a["probs"], a["logits"], targets, cfg.vocab_size)
        self.mean_loss = float(a["losses"].mean())
        return self.mean_loss

    # -- backward --------------------------------------------------------------

    def backward(self, loss_scale=1.0):
        """Add d(mean loss * loss_scale)/d(params) into self.grads (call zero_grad first).

        Gradient accumulation over k micro-batches passes loss_scale=1/k."""
        if self.mean_loss is None:
            raise RuntimeError("backward() needs a forward() with targets first")
        if self.grads is None:
            self.zero_grad()
        cfg, p, g, a, d = self.config, self.p, self.g, self.acts, self.dacts
        B, T, V, NH = self.B, self.T, cfg.vocab_size, cfg.n_heads
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        rmsnorm_backward, rope_backward, swiglu_backward = self._kernels("rmsnorm_backward", "rope_backward",
                                                                         "swiglu_backward")
        attention_backward, embedding_backward = self._kernels("attention_backward", "embedding_backward")
        heads = {"heads": d["heads"]} if self.fused else {}  # the kernel's scratch for grouped heads
        dloss = loss_scale / (B * T)  # the loss is a mean over all B*T positions

        # softmax + cross-entropy, then the classifier
        if self.fused:
            from llmpy.gpt2 import kernels
            kernels.crossentropy_backward_inplace(a["logits"], a["lse"], self.targets, V, dloss)
            dlogits = a["logits"]  # overwritten in place: logits are gone after this
        else:
            dlogits = d["dlogits"]
            dlogits.fill(0.0)
            dlosses = self.xp.full((B, T), dloss, dtype=self.params.dtype)
            layers.crossentropy_softmax_backward(dlogits, dlosses, a["probs"], self.targets, V)
        dres, dln = d["dresidual"], d["dln"]
        # input gradients with a single source are written (accumulate=False), so their buffers need no
        # zeroing; parameter gradients and dres collect several contributions and are added into
        linear_backward(dln, self._wcls(g), dlogits, a["lnf"], self._wcls(p), accumulate=False)
        rmsnorm_backward(dres, g.rms_final, dln, a["residual3"][cfg.n_layers - 1], p.rms_final, a["lnf_rstd"],
                         accumulate=False)

        # the layers, top to bottom. dres is the gradient of the residual stream; since each block adds into
        # the stream (residual3 = residual2 + w2(hb), residual2 = residual + wo(atty)), dres is at once
        # d(residual3), d(w2 hb), d(residual2), d(wo atty) and, at the end, d(residual).
        for l in reversed(range(cfg.n_layers)):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            # ffn block
            linear_backward(d["dhb"], g.w2[l], dres, a["hb"][l], p.w2[l], accumulate=False)
            swiglu_backward(d["dh1"], d["dh3"], d["dhb"], a["h1"][l], a["h3"][l], accumulate=False)
            linear_backward(dln, g.w1[l], d["dh1"], a["ln2"][l], p.w1[l], accumulate=False)
            linear_backward(dln, g.w3[l], d["dh3"], a["ln2"][l], p.w3[l])  # x feeds w1 and w3: gradients add
            rmsnorm_backward(dres, g.rms_ffn[l], dln, a["residual2"][l], p.rms_ffn[l], a["ln2_rstd"][l])
            # attention block
            linear_backward(d["datty"], g.wo[l], dres, a["atty"][l], p.wo[l], accumulate=False)
            attention_backward(d["dq"], d["dk"], d["dv"], d["datty"], a["q"][l], a["k"][l], a["v"][l], a["att"][l],
                               NH, scratch=d["datt"], accumulate=False, **heads)
            rope_backward(d["dq"], d["dq"], cos, sin, accumulate=False)  # in place: d(rotated) -> d(wq x)
            rope_backward(d["dk"], d["dk"], cos, sin, accumulate=False)
            linear_backward(dln, g.wq[l], d["dq"], a["ln1"][l], p.wq[l], accumulate=False)
            linear_backward(dln, g.wk[l], d["dk"], a["ln1"][l], p.wk[l])  # x feeds wq, wk, wv: gradients add
            linear_backward(dln, g.wv[l], d["dv"], a["ln1"][l], p.wv[l])
            rmsnorm_backward(dres, g.rms_att[l], dln, residual, p.rms_att[l], a["ln1_rstd"][l])
        embedding_backward(g.tok_emb, dres, self.inputs)
        self.mean_loss = None  # the fused path consumed the logits: no second backward on them

    # -- helpers ---------------------------------------------------------------

    def logits(self):
        """The logits (B,T,V) of the last forward, before any backward."""
        return self.acts["logits"]

    def _kernels(self, *names):
        # the fused kernels (train_kernels) or the plain layers, by name: the same signatures
        if self.fused:
            from llmpy.llama import train_kernels
            return [getattr(train_kernels, name) for name in names]
        return [getattr(layers, name) for name in names]

    def _wcls(self, views):
        # the classifier's weight (or gradient) view: the embedding table itself when shared
        return views.tok_emb if self.config.shared_classifier else views.wcls


def _residual_linear(out, residual, inp, weight):
    # out, residual are (B,T,C), inp is (B,T,IC), weight is (C,IC): out = residual + inp @ weight.T, as one
    # GEMM adding onto a copy of the residual (no (B,T,C) temporary and no separate add pass).
    # Its backward is linear_backward for inp and weight, and dout itself for the residual.
    out[...] = residual
    matmul_acc(_flat(out), _flat(inp), weight.T)


def _check_tokens(tokens, what, vocab_size, xp):
    if tokens.ndim != 2:
        raise ValueError(f"{what} must be a (B,T) array of token ids, got shape {tokens.shape}")
    if tokens.dtype != xp.int32:
        raise ValueError(f"{what} must be int32 token ids, got {tokens.dtype}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"{what} has token ids outside [0, {vocab_size}): "
                         f"min {int(tokens.min())}, max {int(tokens.max())}")
