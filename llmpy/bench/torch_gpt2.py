"""The GPT-2 training step in PyTorch eager, for `llmpy bench train` only (never used by the package).

Built from the same flat llm.c parameters, so both sides run the same model on the same batch.
"""

import math

import numpy as np

from llmpy.bench.train import time_median


def torch_step_time(cfg, params, x, y, steps):
    import torch
    import torch.nn.functional as F

    from llmpy.gpt2.model import param_shapes

    torch.manual_seed(0)
    tensors, offset = {}, 0
    for name, shape in param_shapes(cfg).items():
        n = math.prod(shape)
        tensors[name] = torch.nn.Parameter(torch.from_numpy(params[offset:offset + n].reshape(shape).copy()))
        offset += n
    p = tensors
    C, NH, L, V = cfg.channels, cfg.num_heads, cfg.num_layers, cfg.vocab_size
    xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))
    B, T = x.shape

    def forward():
        h = p["wte"][xt] + p["wpe"][:T]
        for l in range(L):
            a = F.layer_norm(h, (C,), p["ln1w"][l], p["ln1b"][l])
            q, k, v = F.linear(a, p["qkvw"][l], p["qkvb"][l]).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // NH))
            att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
            z = (att @ v).transpose(1, 2).reshape(B, T, C)
            h = h + F.linear(z, p["attprojw"][l], p["attprojb"][l])
            a = F.layer_norm(h, (C,), p["ln2w"][l], p["ln2b"][l])
            h = h + F.linear(F.gelu(F.linear(a, p["fcw"][l], p["fcb"][l]), approximate="tanh"),
                             p["fcprojw"][l], p["fcprojb"][l])
        h = F.layer_norm(h, (C,), p["lnfw"], p["lnfb"])
        logits = F.linear(h, p["wte"][:V])
        return F.cross_entropy(logits.view(-1, V), yt.view(-1))

    opt = torch.optim.AdamW(list(p.values()), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=False)
        forward().backward()
        opt.step()

    return time_median(step, steps, warmup=2)
