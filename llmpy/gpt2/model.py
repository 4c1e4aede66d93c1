"""GPT-2 as llm.c lays it out: one flat parameter buffer cut into 16 named tensors, activations
preallocated for a (B,T) batch, forward and backward that call the layers in llmpy/gpt2/layers.py.

    model = GPT2(config, params)            # params: flat float32, llm.c order
    loss = model.forward(inputs, targets)   # inputs, targets (B,T) int32
    model.zero_grad(); model.backward()     # model.grads: flat, the same 16 views
    adamw.step(model.params, model.grads)   # llmpy.optim

What this does not handle: dropout (GPT-2 training in llm.c has none), mixed precision (fp32
only), and batch shapes other than the one the activations were sized for (call `resize`).
"""

import math
from dataclasses import dataclass

import numpy as np

from llmpy.backend import get_array_module
from llmpy.gpt2 import layers
from llmpy.gpt2.layers import encoder_forward, matmul_backward, matmul_forward

# llm.c's named depths: d -> (channels, heads); all use maxT 1024 and GPT-2's vocab padded to 50304
DEPTHS = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25)}
GPT2_VOCAB_SIZE = 50257
GPT2_PADDED_VOCAB_SIZE = 50304  # a multiple of 128, for faster matmuls
INIT_STD = 0.02


@dataclass(frozen=True)
class GPT2Config:
    max_seq_len: int          # maxT
    vocab_size: int           # V, real tokens
    padded_vocab_size: int    # Vp >= V, rows of wte; the padded rows never influence the loss
    num_layers: int           # L
    num_heads: int            # NH
    channels: int             # C

    def __post_init__(self):
        fields = ("max_seq_len", "vocab_size", "padded_vocab_size", "num_layers", "num_heads", "channels")
        for name in fields:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPT2Config.{name} must be a positive integer, got {value!r}")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded_vocab_size {self.padded_vocab_size} < vocab_size {self.vocab_size}")
        if self.channels % self.num_heads != 0:
            raise ValueError(f"channels {self.channels} is not divisible by num_heads {self.num_heads}")

    @classmethod
    def from_depth(cls, depth, max_seq_len=1024, vocab_size=GPT2_VOCAB_SIZE,
                   padded_vocab_size=GPT2_PADDED_VOCAB_SIZE):
        """llm.c's descriptors: "d12" is GPT-2 124M, d24 350M, d36 774M, d48 1558M, d6 a small one."""
        d = int(str(depth).lstrip("d"))
        if d not in DEPTHS:
            raise ValueError(f"unknown depth {depth!r}: choose one of {', '.join(f'd{k}' for k in DEPTHS)}")
        channels, heads = DEPTHS[d]
        return cls(max_seq_len, vocab_size, padded_vocab_size, d, heads, channels)


def param_shapes(config):
    """The 16 parameter tensors in llm.c's order, name -> shape."""
    Vp, maxT, C, L = config.padded_vocab_size, config.max_seq_len, config.channels, config.num_layers
    return {
        "wte": (Vp, C), "wpe": (maxT, C),
        "ln1w": (L, C), "ln1b": (L, C),
        "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
        "attprojw": (L, C, C), "attprojb": (L, C),
        "ln2w": (L, C), "ln2b": (L, C),
        "fcw": (L, 4 * C, C), "fcb": (L, 4 * C),
        "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
        "lnfw": (C,), "lnfb": (C,),
    }


def num_parameters(config):
    return sum(math.prod(s) for s in param_shapes(config).values())


class NamedViews:
    """Named views into one flat buffer: `views.qkvw[l]` is layer l's (3C,C) weight. Write in place."""

    def __init__(self, flat, shapes):
        offset = 0
        self.slices = {}
        for name, shape in shapes.items():
            n = math.prod(shape)
            self.slices[name] = slice(offset, offset + n)
            setattr(self, name, flat[offset:offset + n].reshape(shape))
            offset += n
        assert offset == flat.size, f"buffer has {flat.size} elements, the shapes need {offset}"
        self.flat = flat

    def items(self):
        return ((name, getattr(self, name)) for name in self.slices)


MATRIX_PARAMS = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def matrix_param_ranges(config):
    """[start, stop) of the 2-D weight tensors in the flat buffer: the ones llm.c's CUDA trainer
    applies weight decay to (not biases, not layernorm parameters)."""
    ranges, offset = [], 0
    for name, shape in param_shapes(config).items():
        n = math.prod(shape)
        if name in MATRIX_PARAMS:
            ranges.append((offset, offset + n))
        offset += n
    return ranges


def init_params(config, rng, dtype=np.float32):
    """llm.c's init: weights N(0, 0.02), the two residual projections N(0, 0.02/sqrt(2L)),
    layernorm weights 1, biases 0. Padded vocab rows stay 0. `rng` is a np.random.Generator."""
    params = np.zeros(num_parameters(config), dtype=dtype)
    p = NamedViews(params, param_shapes(config))
    residual_std = INIT_STD / math.sqrt(2 * config.num_layers)
    p.wte[:config.vocab_size] = rng.normal(0.0, INIT_STD, (config.vocab_size, config.channels))
    for name in ("wpe", "qkvw", "fcw"):
        getattr(p, name)[...] = rng.normal(0.0, INIT_STD, getattr(p, name).shape)
    for name in ("attprojw", "fcprojw"):
        getattr(p, name)[...] = rng.normal(0.0, residual_std, getattr(p, name).shape)
    for name in ("ln1w", "ln2w", "lnfw"):
        getattr(p, name)[...] = 1.0
    return params


def activation_shapes(config, B, T):
    """The forward pass's saved activations, llm.c's names, name -> shape."""
    C, L, NH, Vp = config.channels, config.num_layers, config.num_heads, config.padded_vocab_size
    return {
        "encoded": (B, T, C),
        "ln1": (L, B, T, C), "ln1_mean": (L, B, T), "ln1_rstd": (L, B, T),
        "qkv": (L, B, T, 3 * C),
        "atty": (L, B, T, C),
        "att": (L, B, NH, T, T),
        "attproj": (L, B, T, C),
        "residual2": (L, B, T, C),
        "ln2": (L, B, T, C), "ln2_mean": (L, B, T), "ln2_rstd": (L, B, T),
        "fch": (L, B, T, 4 * C),
        "fch_gelu": (L, B, T, 4 * C),
        "fcproj": (L, B, T, C),
        "residual3": (L, B, T, C),
        "lnf": (B, T, C), "lnf_mean": (B, T), "lnf_rstd": (B, T),
        "logits": (B, T, Vp),   # the fused CPU path turns these into dlogits in place during backward
        "probs": (B, T, Vp),    # plain path only
        "losses": (B, T),
        "lse": (B, T),          # fused path only: log-sum-exp of each row's real logits
    }


def grad_activation_shapes(config, B, T):
    """Gradient scratch for backward: one layer's worth, reused down the stack."""
    C, Vp = config.channels, config.padded_vocab_size
    return {
        "dresidual": (B, T, C),   # the residual stream's gradient, carried from top to bottom
        "dln": (B, T, C), "datty": (B, T, C), "dqkv": (B, T, 3 * C),
        "dfch": (B, T, 4 * C), "dfch_gelu": (B, T, 4 * C),
        "datt": (B, config.num_heads, T, T),
        "dlogits": (B, T, Vp),    # plain path only
    }


def _alloc(shapes, xp, dtype, skip=()):
    return {name: xp.zeros(shape, dtype=dtype) for name, shape in shapes.items() if name not in skip}


class GPT2:
    """The model: parameters, gradients and activations, each a flat or preallocated buffer.

    `fused=True` (the default for float32 on the CPU when Numba is installed) runs the memory-bound layers
    through llmpy/gpt2/kernels.py and keeps a single (B,T,Vp) buffer for logits/probs/dlogits;
    `fused=False` runs the plain layers, which read like the math and work on any array module.
    """

    def __init__(self, config, params, B=None, T=None, fused=None):
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
        self.B = self.T = None
        self.acts = self.dacts = None
        self.inputs = self.targets = None
        self.mean_loss = None
        if B is not None:
            self.resize(B, T)

    # -- buffers ---------------------------------------------------------------

    def resize(self, B, T):
        """(Re)allocate the activations for batches of shape (B,T)."""
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length T={T} exceeds the model's max_seq_len {self.config.max_seq_len}")
        if (B, T) == (self.B, self.T):
            return
        dtype = self.params.dtype
        skip = ("probs",) if self.fused else ("lse",)
        self.acts = _alloc(activation_shapes(self.config, B, T), self.xp, dtype, skip)
        dskip = ("dlogits",) if self.fused else ()
        self.dacts = _alloc(grad_activation_shapes(self.config, B, T), self.xp, dtype, dskip)
        self.B, self.T = B, T

    def zero_grad(self):
        if self.grads is None:  # allocated lazily: inference never needs them
            self.grads = self.xp.zeros_like(self.params)
            self.g = NamedViews(self.grads, param_shapes(self.config))
        else:
            self.grads.fill(0.0)

    # -- forward ---------------------------------------------------------------

    def forward(self, inputs, targets=None):
        """Run the model on inputs (B,T) int32. With targets, return the mean loss (a float);
        without, return None (inference: `self.acts["logits"][..., :V]` holds the logits)."""
        xp, cfg = self.xp, self.config
        B, T = inputs.shape
        V = cfg.vocab_size
        self._check_tokens(inputs, "inputs")
        if targets is not None:
            self._check_tokens(targets, "targets")
        self.resize(B, T)
        self.inputs, self.targets = inputs, targets
        p, a = self.p, self.acts
        NH = cfg.num_heads
        ln_fwd, gelu_fwd = self._kernel("layernorm_forward"), self._kernel("gelu_forward")
        attention_forward = self._kernel("attention_forward")

        encoder_forward(a["encoded"], inputs, p.wte, p.wpe)
        for l in range(cfg.num_layers):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            ln_fwd(a["ln1"][l], a["ln1_mean"][l], a["ln1_rstd"][l], residual, p.ln1w[l], p.ln1b[l])
            matmul_forward(a["qkv"][l], a["ln1"][l], p.qkvw[l], p.qkvb[l])
            attention_forward(a["atty"][l], a["att"][l], a["qkv"][l], NH)
            matmul_forward(a["attproj"][l], a["atty"][l], p.attprojw[l], p.attprojb[l])
            xp.add(residual, a["attproj"][l], out=a["residual2"][l])
            ln_fwd(a["ln2"][l], a["ln2_mean"][l], a["ln2_rstd"][l], a["residual2"][l], p.ln2w[l], p.ln2b[l])
            matmul_forward(a["fch"][l], a["ln2"][l], p.fcw[l], p.fcb[l])
            gelu_fwd(a["fch_gelu"][l], a["fch"][l])
            matmul_forward(a["fcproj"][l], a["fch_gelu"][l], p.fcprojw[l], p.fcprojb[l])
            xp.add(a["residual2"][l], a["fcproj"][l], out=a["residual3"][l])
        last = a["residual3"][cfg.num_layers - 1]
        ln_fwd(a["lnf"], a["lnf_mean"], a["lnf_rstd"], last, p.lnfw, p.lnfb)
        matmul_forward(a["logits"], a["lnf"], p.wte, None)  # tied lm_head over all Vp rows

        if targets is None:
            self.mean_loss = None
            return None
        if self.fused:
            from llmpy.gpt2 import kernels
            kernels.crossentropy_forward(a["losses"], a["lse"], a["logits"], targets, V)
        else:
            layers.softmax_crossentropy_forward(a["losses"], a["probs"], a["logits"], targets, V)
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
        B, T, V, NH = self.B, self.T, cfg.vocab_size, cfg.num_heads
        ln_bwd, gelu_bwd = self._kernel("layernorm_backward"), self._kernel("gelu_backward")
        attention_backward, encoder_backward = self._kernel("attention_backward"), self._kernel("encoder_backward")
        dloss = loss_scale / (B * T)  # the loss is a mean over all B*T positions

        # softmax + cross-entropy, then the tied lm_head
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
        # input gradients with a single source are written (accumulate=False), so their buffers need
        # no zeroing; parameter gradients and dres collect several contributions and are added into
        matmul_backward(dln, g.wte, None, dlogits, a["lnf"], p.wte, accumulate=False)
        dres.fill(0.0)
        ln_bwd(dres, g.lnfw, g.lnfb, dln, a["residual3"][cfg.num_layers - 1], p.lnfw, a["lnf_mean"], a["lnf_rstd"])

        # the blocks, top to bottom. dres is the gradient of the residual stream; since each block
        # adds into the stream (residual3 = residual2 + fcproj, residual2 = residual + attproj),
        # dres is at once d(residual3), d(fcproj), d(residual2), d(attproj) and, at the end, d(residual).
        for l in reversed(range(cfg.num_layers)):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            matmul_backward(d["dfch_gelu"], g.fcprojw[l], g.fcprojb[l], dres, a["fch_gelu"][l], p.fcprojw[l],
                            accumulate=False)
            gelu_bwd(d["dfch"], a["fch"][l], d["dfch_gelu"], accumulate=False)
            matmul_backward(dln, g.fcw[l], g.fcb[l], d["dfch"], a["ln2"][l], p.fcw[l], accumulate=False)
            ln_bwd(dres, g.ln2w[l], g.ln2b[l], dln, a["residual2"][l], p.ln2w[l], a["ln2_mean"][l], a["ln2_rstd"][l])
            matmul_backward(d["datty"], g.attprojw[l], g.attprojb[l], dres, a["atty"][l], p.attprojw[l],
                            accumulate=False)
            attention_backward(d["dqkv"], d["datty"], a["qkv"][l], a["att"][l], NH, scratch=d["datt"],
                               accumulate=False)
            matmul_backward(dln, g.qkvw[l], g.qkvb[l], d["dqkv"], a["ln1"][l], p.qkvw[l], accumulate=False)
            ln_bwd(dres, g.ln1w[l], g.ln1b[l], dln, residual, p.ln1w[l], a["ln1_mean"][l], a["ln1_rstd"][l])
        encoder_backward(g.wte, g.wpe, dres, self.inputs)
        self.mean_loss = None  # the fused path consumed the logits: no second backward on them

    # -- helpers ---------------------------------------------------------------

    def logits(self):
        """The real-vocab logits (B,T,V) of the last forward, before any backward."""
        return self.acts["logits"][..., :self.config.vocab_size]

    def _kernel(self, name):
        if self.fused:
            from llmpy.gpt2 import kernels
            return getattr(kernels, name)
        return getattr(layers, name)

    def _check_tokens(self, tokens, what):
        xp = self.xp
        if tokens.ndim != 2:
            raise ValueError(f"{what} must be a (B,T) array of token ids, got shape {tokens.shape}")
        if tokens.dtype != xp.int32:
            raise ValueError(f"{what} must be int32 token ids, got {tokens.dtype}")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            raise ValueError(f"{what} has token ids outside [0, {self.config.vocab_size}): "
                             f"min {int(tokens.min())}, max {int(tokens.max())}")
