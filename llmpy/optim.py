"""AdamW over flat buffers, exactly llm.c's gpt2_update, and global-norm gradient clipping.

    opt = AdamW(num_params, lr=1e-4, weight_decay=0.01)
    scale = clip_scale(global_norm(grads), max_norm=1.0)   # 1.0 when the norm is small enough
    opt.step(params, grads, grad_scale=scale)

params, grads, m and v are each one flat float32 array, so a step is one pass over memory (the
fused Numba kernel) and the optimizer state is one array each for checkpoints and MPI sharding.

Weight decay is decoupled (AdamW) and applies to the ranges in `decay_ranges` (default: every
parameter, as llm.c's CPU trainer; llm.c's CUDA trainer decays only the 2-D weights: see
llmpy.gpt2.model.matrix_param_ranges).
"""

import math

import numpy as np

from llmpy.backend import get_array_module
from llmpy.gpt2 import kernels


class AdamW:
    def __init__(self, num_params, lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 decay_ranges=None, xp=np, dtype=np.float32):
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, beta1, beta2, eps, weight_decay
        self.num_params = num_params
        self.decay_ranges = [(0, num_params)] if decay_ranges is None else sorted(decay_ranges)
        self.m = xp.zeros(num_params, dtype=dtype)
        self.v = xp.zeros(num_params, dtype=dtype)
        self.t = 0  # steps taken: the bias corrections use t after the increment

    def _segments(self):
        """(start, stop, weight_decay) covering [0, num_params) in order."""
        segments, pos = [], 0
        for start, stop in self.decay_ranges:
            if start > pos:
                segments.append((pos, start, 0.0))
            segments.append((start, stop, self.weight_decay))
            pos = stop
        if pos < self.num_params:
            segments.append((pos, self.num_params, 0.0))
        return segments

    def step(self, params, grads, lr=None, grad_scale=1.0, zero_grads=False):
        """One AdamW update of params from grads * grad_scale. With zero_grads, the same pass
        leaves grads zeroed, ready for the next backward (saves a separate pass)."""
        lr = self.lr if lr is None else lr
        self.t += 1
        bc1 = 1.0 - self.beta1 ** self.t
        bc2 = 1.0 - self.beta2 ** self.t
        xp = get_array_module(params)
        for start, stop, wd in self._segments():
            p, g, m, v = params[start:stop], grads[start:stop], self.m[start:stop], self.v[start:stop]
            if xp is np and kernels.AVAILABLE:
                kernels.adamw_update(p, g, m, v, lr, self.beta1, self.beta2, self.eps, wd, bc1, bc2,
                                     grad_scale, zero_grads)
            else:
                adamw_update_plain(p, g, m, v, lr, self.beta1, self.beta2, self.eps, wd, bc1, bc2, grad_scale)
                if zero_grads:
                    g.fill(0.0)

    def state_dict(self):
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state):
        """Restore a state_dict(); ValueError when it cannot be AdamW's state for these parameters: m and v
        of the wrong shape or type, not finite, v (a mean of squares) negative, t not a count >= 0, or t=0
        (no update yet) with moments that are not zero."""
        m, v, t = state["m"], state["v"], np.asarray(state["t"])
        for name, a in (("m", m), ("v", v)):
            if a.shape != self.m.shape or a.dtype != self.m.dtype:
                raise ValueError(f"optimizer state {name} is {a.dtype} {a.shape}, this model needs "
                                 f"{self.m.dtype} {self.m.shape}")
        if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise ValueError(f"optimizer step count t={t!r} is not an integer >= 0")
        xp = get_array_module(m)
        if not (bool(xp.isfinite(m).all()) and bool(xp.isfinite(v).all()) and bool((v >= 0).all())):
            raise ValueError("optimizer state holds NaN or inf in m or v, or a negative v (a mean of squares)")
        if int(t) == 0 and (bool(m.any()) or bool(v.any())):
            raise ValueError("optimizer state says t=0 (no update yet) but its m or v is not zero")
        self.m[...] = m
        self.v[...] = v
        self.t = int(t)


def adamw_update_plain(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale=1.0):
    """The readable AdamW step (any array module); kernels.adamw_update is the fused one."""
    g = grads * grad_scale
    m *= beta1
    m += (1.0 - beta1) * g                     # m = beta1 * m + (1 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g                 # v = beta2 * v + (1 - beta2) * g^2
    m_hat = m / bc1
    v_hat = v / bc2
    xp = get_array_module(params)
    params -= lr * (m_hat / (xp.sqrt(v_hat) + eps) + weight_decay * params)


def global_norm(grads):
    """The L2 norm of the whole flat gradient, accumulated in float64."""
    xp = get_array_module(grads)
    if xp is np and kernels.AVAILABLE:
        return math.sqrt(kernels.sum_of_squares(grads))
    return float(xp.sqrt(xp.sum(grads.astype(xp.float64) ** 2)))


def clip_scale(norm, max_norm):
    """llm.c's clipping: scale the gradient by max_norm / norm when norm exceeds max_norm."""
    if max_norm is None or max_norm <= 0.0 or not norm > max_norm:
        return 1.0
    return max_norm / norm
