"""A PyTorch reference of `llmpy train`'s optimization, for the quality benchmark and tests.

Written from the recipe, not from llmpy's code: GPT-2 forward from gpt2_torch.py (llm.c's layout, float32),
autograd for the gradients, gradient accumulation (each micro-batch's loss / k), llm.c's global-norm clip
(scale max/norm when norm > max), torch.optim.AdamW on the flat parameter vector with decoupled weight decay
applied by hand to the 2-D weights only (torch's AdamW decays p by lr*wd before its Adam update, exactly
llm.c's `p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)`), and a warmup + cosine schedule.

    losses = train(init_flat, cfg, batches, steps, grad_accum, lr=..., warmup=..., final_frac=..., wd=...)

`batches` yields (x, y) int32 numpy arrays (B,T); the caller feeds the same ones llmpy's loader gives.
A Llama trains in the same loop: `train(..., model=llama_model(config))`, the forward of llama_train_torch.py
(llama2.c's model.py) over the flat vector cut in llama2.c's v0 order, weight decay on its 2-D weights.
"""

import math
import time

import numpy as np
import torch
from gpt2_torch import RefConfig, gpt2_forward, param_shapes

MATRIX_NAMES = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def decay_mask(cfg):
    """A bool tensor over the flat vector: True on the 2-D weights (the ones that get weight decay)."""
    parts = []
    for name, shape in param_shapes(cfg).items():
        parts.append(torch.full((math.prod(shape),), name in MATRIX_NAMES, dtype=torch.bool))
    return torch.cat(parts)


def llama_model(config):
    """(loss_fn(w, x, y), decay mask) of a Llama (llmpy.llama's LlamaConfig) on the flat vector w: its weights
    are views of w in llama2.c's v0 order (llmpy.llama.train_model.param_shapes, the layout of the file)."""
    import llama_train_torch

    from llmpy.llama.train_model import MATRIX_PARAMS, param_shapes

    shapes = param_shapes(config)

    def loss_fn(w, x, y):
        views, offset = {}, 0
        for name, shape in shapes.items():
            views[name] = w[offset:offset + math.prod(shape)].view(shape)
            offset += math.prod(shape)
        return llama_train_torch.forward(config, views, x, y)[1]

    mask = torch.cat([torch.full((math.prod(s),), n in MATRIX_PARAMS, dtype=torch.bool) for n, s in shapes.items()])
    return loss_fn, mask


def cosine_lr(step, lr, warmup, steps, final_frac):
    if step < warmup:
        return lr * (step + 1) / warmup
    ratio = (step - warmup) / max(1, steps - warmup)
    lo = lr * final_frac
    return lo + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - lo)


def train(init_flat, cfg, batches, steps, grad_accum=1, lr=1e-3, warmup=0, final_frac=1.0, weight_decay=0.0,
          beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0, threads=None, model=None):
    """Per-step mean train losses (and seconds per step) of `steps` optimizer steps.

    model: (loss_fn(w, x, y), decay mask) of another model than GPT-2 (llama_model(config)); cfg is then unused."""
    if threads:
        torch.set_num_threads(threads)
    if model is None:
        cfg = RefConfig(**{k: getattr(cfg, k) for k in RefConfig.__dataclass_fields__})
        model = (lambda w, x, y: gpt2_forward(w, cfg, x, y)[1]), decay_mask(cfg)
    loss_fn, mask = model
    w = torch.tensor(np.asarray(init_flat, dtype=np.float32)).requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0.0)
    losses, seconds = [], []
    it = iter(batches)
    for step in range(steps):
        t0 = time.perf_counter()
        total = 0.0
        for _ in range(grad_accum):
            x, y = next(it)
            loss = loss_fn(w, torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)))
            (loss / grad_accum).backward()
            total += loss.item() / grad_accum
        with torch.no_grad():
            norm = w.grad.double().norm().item()
            if grad_clip > 0 and norm > grad_clip:
                w.grad.mul_(grad_clip / norm)
            step_lr = cosine_lr(step, lr, warmup, steps, final_frac)
            for group in opt.param_groups:
                group["lr"] = step_lr
            w[mask] *= 1.0 - step_lr * weight_decay   # decoupled decay, 2-D weights only
        opt.step()
        opt.zero_grad(set_to_none=False)
        losses.append(total)
        seconds.append(time.perf_counter() - t0)
    return losses, seconds
