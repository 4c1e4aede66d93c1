"""A plain PyTorch Llama for training, as llama2.c's model.py computes it: the reference for llmpy.llama.layers
and llmpy.llama.train_model.

Written from llama2.c's model.py, not from llmpy: RMSNorm x * rsqrt(mean(x^2) + eps) * w; RoPE on the complex
numbers made of adjacent pairs (view_as_complex, freqs_cis with theta); grouped-query attention by repeating
each key/value head n_heads / n_kv_heads times (repeat_kv); SwiGLU w2(silu(w1 x) * w3 x); a classifier tied
to the token embedding or not; mean cross-entropy. Batched (B,T); works in the dtype of the weights given.
Weights use llmpy.llama.model's names and shapes (tok_emb, rms_att, wq, ... , rms_final, wcls).
"""

import math

import torch
import torch.nn.functional as F


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def freqs_cis(head_size, T, theta, dtype=torch.float64):
    """(T, hs/2) complex: e^(i * t * theta^(-2j/hs)), llama2.c's precompute_freqs_cis."""
    freqs = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), freqs)
    cplx = torch.complex64 if dtype == torch.float32 else torch.complex128
    return torch.polar(torch.ones_like(angles), angles).to(cplx)


def rope(x, theta):
    """x is (B, T, n_heads, hs) at positions 0..T-1: each adjacent pair turned as one complex number."""
    B, T, nh, hs = x.shape
    xc = torch.view_as_complex(x.reshape(B, T, nh, hs // 2, 2).contiguous())
    return torch.view_as_real(xc * freqs_cis(hs, T, theta, x.dtype)[None, :, None, :]).reshape(B, T, nh, hs)


def repeat_kv(x, n_rep):
    """(B, T, NKV, hs) -> (B, T, NKV * n_rep, hs): kv head j serves query heads j*n_rep .. j*n_rep + n_rep-1."""
    B, T, NKV, hs = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(B, T, NKV, n_rep, hs).reshape(B, T, NKV * n_rep, hs)


def attention(q, k, v, n_heads, return_att=False):
    """Causal attention of q (B,T,C) over k, v (B,T,KV), all three already rotated where RoPE applies."""
    B, T, C = q.shape
    hs = C // n_heads
    n_kv = k.shape[-1] // hs
    xq = q.view(B, T, n_heads, hs).transpose(1, 2)                              # (B,NH,T,hs)
    xk = repeat_kv(k.view(B, T, n_kv, hs), n_heads // n_kv).transpose(1, 2)
    xv = repeat_kv(v.view(B, T, n_kv, hs), n_heads // n_kv).transpose(1, 2)
    scores = xq @ xk.transpose(2, 3) / math.sqrt(hs)
    mask = torch.full((T, T), float("-inf"), dtype=q.dtype).triu(1)
    att = torch.softmax(scores + mask, dim=-1)
    y = (att @ xv).transpose(1, 2).reshape(B, T, C)
    return (y, att) if return_att else y


def swiglu(h1, h3):
    return F.silu(h1) * h3


def forward(config, w, tokens, targets=None):
    """(logits (B,T,V), mean loss or None) of llama2.c's Transformer.forward with weights w (torch tensors)."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    B, T = tokens.shape
    C, NH, NKV = config.dim, config.n_heads, config.n_kv_heads
    hs = C // NH
    eps, theta = config.norm_eps, config.rope_theta
    x = w["tok_emb"][tokens]                                                    # (B,T,C)
    for layer in range(config.n_layers):
        h = rmsnorm(x, w["rms_att"][layer], eps)
        q = rope((h @ w["wq"][layer].T).view(B, T, NH, hs), theta).reshape(B, T, C)
        k = rope((h @ w["wk"][layer].T).view(B, T, NKV, hs), theta).reshape(B, T, NKV * hs)
        v = h @ w["wv"][layer].T
        x = x + attention(q, k, v, NH) @ w["wo"][layer].T
        h = rmsnorm(x, w["rms_ffn"][layer], eps)
        x = x + swiglu(h @ w["w1"][layer].T, h @ w["w3"][layer].T) @ w["w2"][layer].T
    x = rmsnorm(x, w["rms_final"], eps)
    wcls = w["tok_emb"] if config.shared_classifier else w["wcls"]
    logits = x @ wcls.T
    if targets is None:
        return logits, None
    loss = F.cross_entropy(logits.reshape(B * T, -1), torch.as_tensor(targets, dtype=torch.long).reshape(-1))
    return logits, loss
