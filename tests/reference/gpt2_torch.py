"""An independent PyTorch GPT-2, exactly as llm.c's train_gpt2.py computes it, built from llm.c's flat parameters.

This is the test-side reference for llmpy's hand-written GPT-2 (issue 2). It is written from the model's
definition, not from llmpy's code: learned position embeddings, pre-LN blocks, causal self-attention with
scale 1/sqrt(hs), GELU in its tanh form, a final layernorm, an lm_head tied to wte, mean cross-entropy.

Parameters live in one flat vector cut into llm.c's 16 tensors, in llm.c's order (see PARAM_NAMES). wte has
Vp >= V rows; only the first V rows make logits, so the padded rows never touch the loss and get zero gradient.
Everything works in float32 and float64 (the dtype of the flat vector decides).

It also writes llm.c's files from numpy arrays:
    model checkpoint: 256 int32 header [20240326, 3 (fp32) | 5 (bf16), maxT, V, L, NH, C, Vp, 0...] + params
    debug state:      256 int32 header [20240327, 2, B, T, 0...] + x int32 (B,T) + y int32 (B,T)
                      + logits fp32 (B,T,V) unpadded + loss fp32 + the 16 gradients fp32 (wte's padded to Vp)
Not handled: llm.c's older checkpoint versions (1, 2, 4), the tokenizer and data files.
"""

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MODEL_MAGIC = 20240326
MODEL_VERSION_FP32 = 3
MODEL_VERSION_BF16 = 5
STATE_MAGIC = 20240327
STATE_VERSION = 2
HEADER_INTS = 256
LAYERNORM_EPS = 1e-5
INIT_STD = 0.02
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715

PARAM_NAMES = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")


@dataclass(frozen=True)
class RefConfig:
    max_seq_len: int        # maxT
    vocab_size: int         # V
    padded_vocab_size: int  # Vp >= V, rows V..Vp-1 of wte are zero
    num_layers: int         # L
    num_heads: int          # NH
    channels: int           # C


def param_shapes(cfg):
    """name -> shape of llm.c's 16 parameter tensors, in llm.c's order."""
    Vp, maxT, L, C = cfg.padded_vocab_size, cfg.max_seq_len, cfg.num_layers, cfg.channels
    shapes = [(Vp, C), (maxT, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C), (L, C, C), (L, C),
              (L, C), (L, C), (L, 4 * C, C), (L, 4 * C), (L, C, 4 * C), (L, C), (C,), (C,)]
    return dict(zip(PARAM_NAMES, shapes))


def num_parameters(cfg):
    return sum(math.prod(s) for s in param_shapes(cfg).values())


def split_params(flat, cfg):
    """Named views (no copies) into a flat torch tensor or numpy array, in llm.c's order."""
    views, offset = {}, 0
    for name, shape in param_shapes(cfg).items():
        n = math.prod(shape)
        views[name] = flat[offset:offset + n].reshape(shape)
        offset += n
    assert offset == flat.shape[0], f"flat vector has {flat.shape[0]} elements, config needs {offset}"
    return views


# ----------------------------------------------------------------------------------------------------------
# initialization

def init_params(cfg, generator, dtype=torch.float32, perturb=False):
    """llm.c's random init: N(0, 0.02), the residual projections N(0, 0.02/sqrt(2L)), LN weights 1, biases 0.

    With perturb=True, LN weights become 1 + N(0, 0.1) and every bias N(0, 0.02), so that a test
    exercises every gradient path. wte's padded rows are zero either way.
    """
    flat = torch.zeros(num_parameters(cfg), dtype=torch.float64)
    p = split_params(flat, cfg)
    V = cfg.vocab_size
    residual_std = INIT_STD / math.sqrt(2 * cfg.num_layers)
    for name in PARAM_NAMES:  # fixed order keeps the generator stream deterministic
        t = p[name]
        if name == "wte":
            t[:V] = torch.randn(t[:V].shape, generator=generator, dtype=torch.float64) * INIT_STD
        elif name in ("attprojw", "fcprojw"):
            t.copy_(torch.randn(t.shape, generator=generator, dtype=torch.float64) * residual_std)
        elif name in ("wpe", "qkvw", "fcw"):
            t.copy_(torch.randn(t.shape, generator=generator, dtype=torch.float64) * INIT_STD)
        elif name in ("ln1w", "ln2w", "lnfw"):
            t.fill_(1.0)
            if perturb:
                t.add_(torch.randn(t.shape, generator=generator, dtype=torch.float64) * 0.1)
        else:  # biases
            if perturb:
                t.copy_(torch.randn(t.shape, generator=generator, dtype=torch.float64) * INIT_STD)
    # round through float32 so that float64 and float32 models start from the same numbers
    return flat.to(torch.float32).to(dtype)


# ----------------------------------------------------------------------------------------------------------
# layers (the reference each hand-written layer is tested against)

def encoder(inp, wte, wpe):
    # inp (B,T) int64, wte (Vp,C), wpe (maxT,C) -> (B,T,C)
    T = inp.shape[1]
    return wte[inp] + wpe[:T]


def layernorm(inp, weight, bias):
    # inp (B,T,C), weight and bias (C,) -> (B,T,C); biased variance, eps inside the sqrt as torch/llm.c
    return F.layer_norm(inp, (inp.shape[-1],), weight, bias, eps=LAYERNORM_EPS)


def matmul(inp, weight, bias=None):
    # inp (B,T,C), weight (OC,C), bias (OC,) -> (B,T,OC)
    out = inp @ weight.T
    return out if bias is None else out + bias


def attention(qkv, NH, return_att=False):
    # qkv (B,T,3C) = q, k, v side by side (llm.c's layout) -> out (B,T,C) [, att (B,NH,T,T)]
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    q, k, v = qkv.split(C, dim=-1)
    q = q.reshape(B, T, NH, hs).transpose(1, 2)  # (B,NH,T,hs)
    k = k.reshape(B, T, NH, hs).transpose(1, 2)
    v = v.reshape(B, T, NH, hs).transpose(1, 2)
    preatt = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B,NH,T,T)
    causal = torch.ones(T, T, dtype=torch.bool, device=qkv.device).tril()
    att = F.softmax(preatt.masked_fill(~causal, float("-inf")), dim=-1)  # zero above the diagonal
    out = (att @ v).transpose(1, 2).reshape(B, T, C)
    return (out, att) if return_att else out


def gelu(x):
    # the tanh approximation GPT-2 uses (OpenAI's "NewGELU")
    return 0.5 * x * (1.0 + torch.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))


def crossentropy_losses(logits, targets, V):
    # logits (B,T,Vp) of which only the first V columns count, targets (B,T) -> per-position losses (B,T)
    logp = F.log_softmax(logits[..., :V], dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------
# the model

def gpt2_forward(flat, cfg, x, y=None):
    """flat: the parameter vector (float32 or float64), x, y: (B,T) integer tensors.

    Returns logits (B,T,V) (unpadded, as llm.c's debug state stores them) and the mean loss (or None).
    """
    p = split_params(flat, cfg)
    L, NH, V = cfg.num_layers, cfg.num_heads, cfg.vocab_size
    x = x.long()
    residual = encoder(x, p["wte"], p["wpe"])  # (B,T,C)
    for l in range(L):
        ln1 = layernorm(residual, p["ln1w"][l], p["ln1b"][l])
        qkv = matmul(ln1, p["qkvw"][l], p["qkvb"][l])  # (B,T,3C)
        atty = attention(qkv, NH)  # (B,T,C)
        attproj = matmul(atty, p["attprojw"][l], p["attprojb"][l])
        residual2 = residual + attproj
        ln2 = layernorm(residual2, p["ln2w"][l], p["ln2b"][l])
        fch = matmul(ln2, p["fcw"][l], p["fcb"][l])  # (B,T,4C)
        fch_gelu = gelu(fch)
        fcproj = matmul(fch_gelu, p["fcprojw"][l], p["fcprojb"][l])  # (B,T,C)
        residual = residual2 + fcproj
    lnf = layernorm(residual, p["lnfw"], p["lnfb"])
    logits = lnf @ p["wte"][:V].T  # tied lm_head over the real vocabulary only: (B,T,V)
    if y is None:
        return logits, None
    loss = crossentropy_losses(logits, y.long(), V).mean()
    return logits, loss


def loss_and_grads(flat, cfg, x, y):
    """One forward + backward. Returns logits (B,T,V), loss (0-d), grads (flat, wte's padded rows zero)."""
    w = flat.detach().clone().requires_grad_(True)
    logits, loss = gpt2_forward(w, cfg, x, y)
    loss.backward()
    return logits.detach(), loss.detach(), w.grad.detach()


def adamw_update(params, grads, m, v, t, lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
    """llm.c's gpt2_update, in place on flat tensors; t counts from 1. Decay applies to every parameter."""
    m.mul_(beta1).add_(grads, alpha=1.0 - beta1)
    v.mul_(beta2).add_(grads * grads, alpha=1.0 - beta2)
    m_hat = m / (1.0 - beta1 ** t)
    v_hat = v / (1.0 - beta2 ** t)
    params.sub_(lr * (m_hat / (v_hat.sqrt() + eps) + weight_decay * params))


def train_losses(flat, cfg, x, y, steps=10, **adamw):
    """test_gpt2's protocol: `steps` AdamW steps on one batch; the loss before each update."""
    params = flat.detach().clone()
    m, v = torch.zeros_like(params), torch.zeros_like(params)
    losses = []
    for step in range(steps):
        _, loss, grads = loss_and_grads(params, cfg, x, y)
        losses.append(loss.item())
        adamw_update(params, grads, m, v, step + 1, **adamw)
    return losses


# ----------------------------------------------------------------------------------------------------------
# bfloat16 and llm.c's files (numpy in, bytes out)

def float32_to_bf16_bits(a):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_float32(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _write_atomically(path, chunks):
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.writelines(chunks)
    os.replace(tmp, path)


def model_header(cfg, version):
    h = np.zeros(HEADER_INTS, dtype=np.int32)
    h[:8] = [MODEL_MAGIC, version, cfg.max_seq_len, cfg.vocab_size, cfg.num_layers, cfg.num_heads,
             cfg.channels, cfg.padded_vocab_size]
    return h


def write_model(path, cfg, params, dtype="float32"):
    """params: flat numpy vector in llm.c's order (wte already padded to Vp).
    dtype 'float32' (v3) or 'bfloat16' (v5)."""
    params = np.asarray(params)
    assert params.shape == (num_parameters(cfg),), f"params has shape {params.shape}"
    if dtype == "float32":
        body = params.astype("<f4").tobytes()
        version = MODEL_VERSION_FP32
    elif dtype == "bfloat16":
        body = float32_to_bf16_bits(params.astype(np.float32)).astype("<u2").tobytes()
        version = MODEL_VERSION_BF16
    else:
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    _write_atomically(path, [model_header(cfg, version).astype("<i4").tobytes(), body])


def write_state(path, cfg, x, y, logits, loss, grads):
    """x, y (B,T) ints; logits (B,T,V); loss scalar; grads flat (num_parameters,) with wte's grad padded to Vp."""
    x, y = np.asarray(x), np.asarray(y)
    B, T = x.shape
    logits = np.asarray(logits)
    assert y.shape == (B, T) and logits.shape == (B, T, cfg.vocab_size), (y.shape, logits.shape)
    grads = np.asarray(grads)
    assert grads.shape == (num_parameters(cfg),), f"grads has shape {grads.shape}"
    h = np.zeros(HEADER_INTS, dtype=np.int32)
    h[:4] = [STATE_MAGIC, STATE_VERSION, B, T]
    _write_atomically(path, [h.astype("<i4").tobytes(), x.astype("<i4").tobytes(), y.astype("<i4").tobytes(),
                             logits.astype("<f4").tobytes(), np.array([loss], dtype="<f4").tobytes(),
                             grads.astype("<f4").tobytes()])
