"""The Llama training step in PyTorch eager, for `llmpy bench train --arch llama` only (never used by the package).

Written as llama2.c's model.py computes it: RMSNorm, RoPE on adjacent pairs with cos/sin tables, grouped-query
attention through repeat_kv and F.scaled_dot_product_attention (causal), SwiGLU, a classifier tied to the
embedding or not, mean cross-entropy; AdamW with weight decay on the 2-D weights only (llama2.c's
configure_optimizers). Built from the same flat parameters as llmpy's Llama (llama2.c's v0 order), so both sides
run the same model on the same batch.
"""

import math

import numpy as np

from llmpy.bench.train import time_median


def torch_step_time(cfg, params, x, y, steps, lr, betas, weight_decay):
    """(median seconds of `steps` training steps (zero_grad, forward, backward, AdamW) after two warm-up steps,
    the loss of the first step: the same number as llmpy's first step when both run the same model)."""
    import torch
    import torch.nn.functional as F

    from llmpy.llama.train_model import MATRIX_PARAMS, param_shapes

    w, offset = {}, 0
    for name, shape in param_shapes(cfg).items():
        n = math.prod(shape)
        w[name] = torch.nn.Parameter(torch.from_numpy(params[offset:offset + n].reshape(shape).copy()))
        offset += n
    C, NH, NKV, L, V = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers, cfg.vocab_size
    hs, eps = C // NH, cfg.norm_eps
    B, T = x.shape
    xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), freqs)
    cos, sin = (t.float()[None, :, None, :] for t in (torch.cos(angles), torch.sin(angles)))  # (1,T,1,hs/2)

    def rmsnorm(h, weight):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(t):  # (B,T,nh,hs): each adjacent pair (re, im) turned by its position's angle
        re, im = t.reshape(*t.shape[:-1], -1, 2).unbind(-1)
        return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(3)

    def forward():
        h = w["tok_emb"][xt]
        for l in range(L):
            a = rmsnorm(h, w["rms_att"][l])
            q = rope(F.linear(a, w["wq"][l]).view(B, T, NH, hs))
            k = rope(F.linear(a, w["wk"][l]).view(B, T, NKV, hs))
            v = F.linear(a, w["wv"][l]).view(B, T, NKV, hs)
            k, v = (t.repeat_interleave(NH // NKV, dim=2) for t in (k, v))  # repeat_kv
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True)
            h = h + F.linear(z.transpose(1, 2).reshape(B, T, C), w["wo"][l])
            a = rmsnorm(h, w["rms_ffn"][l])
            h = h + F.linear(F.silu(F.linear(a, w["w1"][l])) * F.linear(a, w["w3"][l]), w["w2"][l])
        logits = F.linear(rmsnorm(h, w["rms_final"]), w["tok_emb"] if cfg.shared_classifier else w["wcls"])
        return F.cross_entropy(logits.view(-1, V), yt.view(-1))

    groups = [{"params": [p for k, p in w.items() if k in MATRIX_PARAMS], "weight_decay": weight_decay},
              {"params": [p for k, p in w.items() if k not in MATRIX_PARAMS], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = forward()
        loss.backward()
        opt.step()
        return loss.item()

    first_loss = step()
    return time_median(step, steps, warmup=1), first_loss
