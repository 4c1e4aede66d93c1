"""Write the Llama test fixtures (llama2.c model files, debug states with 10 AdamW-step losses) for odd configs.

    python tests/reference/make_llama_fixtures.py            # rewrites tests/fixtures/llama/

For each config NAME in CONFIGS it writes:
    NAME_model.bin   the model, a llama2.c file (v0 or v1, as the config says) written by llmpy's write_llama2c
    NAME_state.bin   its debug state (layout: llmpy/formats/llama_debug.py), written here with NumPy alone:
                     inputs, targets, logits, loss and every parameter's gradient of llama2.c's model.py
                     (tests/reference/llama_train_torch.py) computed in float64 from the file's float32 weights,
                     then the loss before each of 10 torch AdamW steps on the same batch (lr 1e-3, betas
                     0.9/0.95, eps 1e-8, weight decay 0.1 on the 2-D weights only, as llama2.c's train.py groups
                     them; no clipping), also in float64; all stored as float32.
llama2.c files cannot store rope_theta and norm_eps: the fixtures use llama2.c's 1e4 and 1e-5, and the state's
header records them. Everything comes from a seeded torch generator, so the files are the same on every run.
The weights are larger than llama2.c's init (std 1/sqrt(fan_in), norm weights 1 + 0.1 N(0,1)) so that the
attention is far from uniform and every gradient is well above float32 rounding.
"""

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import llama_train_torch as ref

from llmpy.formats.llama2c import write_llama2c
from llmpy.llama.model import LlamaConfig

DEFAULT_SEED = 4242
TRAIN_STEPS = 10
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 1e-8, 0.1
ROPE_THETA, NORM_EPS = 10000.0, 1e-5
STATE_MAGIC, STATE_VERSION = 20260416, 1
# the stored parameters in llama2.c's v0 order (wcls only when not shared) and the ones weight decay applies to
V0_ORDER = ("tok_emb", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final", "wcls")
DECAYED = ("tok_emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls")


def _config(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, shared):
    return LlamaConfig(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, shared,
                       rope_theta=ROPE_THETA, norm_eps=NORM_EPS)


# name -> (config, B, T, llama2.c file version): grouped-query attention 6 query heads over 2 kv heads,
# multi-query (1 kv head) with an untied classifier, head size 48; vocabularies not multiples of 64; T < seq_len
CONFIGS = {
    "gqa6over2_v67": (_config(24, 32, 2, 6, 2, 67, 16, True), 2, 9, 0),
    "mqa_untied_v91": (_config(32, 48, 2, 4, 1, 91, 12, False), 3, 7, 1),
    "hs48_untied_v50": (_config(48, 24, 1, 1, 1, 50, 8, False), 2, 5, 0),
}


def fixture_paths(out_dir, name):
    out_dir = Path(out_dir)
    return {"model": out_dir / f"{name}_model.bin", "state": out_dir / f"{name}_state.bin"}


def shapes(cfg):
    """The v0-ordered table, restated from llama2.c rather than imported from llmpy."""
    L, C, H, V = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.vocab_size
    KV = cfg.n_kv_heads * (cfg.dim // cfg.n_heads)
    table = {"tok_emb": (V, C), "rms_att": (L, C), "wq": (L, C, C), "wk": (L, KV, C), "wv": (L, KV, C),
             "wo": (L, C, C), "rms_ffn": (L, C), "w1": (L, H, C), "w2": (L, C, H), "w3": (L, H, C),
             "rms_final": (C,), "wcls": (V, C)}
    return {name: table[name] for name in V0_ORDER if name != "wcls" or not cfg.shared_classifier}


def init_weights(cfg, gen):
    """float32 weights, name -> tensor (see the module docstring for the scale)."""
    weights = {}
    for name, shape in shapes(cfg).items():
        w = torch.randn(shape, generator=gen, dtype=torch.float32)
        weights[name] = 1.0 + 0.1 * w if name.startswith("rms") else w / math.sqrt(shape[-1])
    return weights


def loss_and_grads(cfg, weights64, x, y):
    w = {k: v.clone().requires_grad_(True) for k, v in weights64.items()}
    logits, loss = ref.forward(cfg, w, x, y)
    loss.backward()
    grads = torch.cat([w[name].grad.reshape(-1) for name in shapes(cfg)])
    return logits.detach(), loss.item(), grads


def train_losses(cfg, weights64, x, y, steps=TRAIN_STEPS):
    """The loss before each of `steps` torch AdamW steps on the batch (x, y)."""
    w = {k: v.clone().requires_grad_(True) for k, v in weights64.items()}
    groups = [{"params": [w[k] for k in w if k in DECAYED], "weight_decay": WEIGHT_DECAY},
              {"params": [w[k] for k in w if k not in DECAYED], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        _, loss = ref.forward(cfg, w, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def write_state(path, cfg, x, y, logits, loss, grads, losses):
    """The debug state's bytes, laid out here independently of llmpy's reader."""
    B, T = x.shape
    header = np.zeros(256, dtype="<i4")
    header[:14] = [STATE_MAGIC, STATE_VERSION, B, T, cfg.vocab_size, cfg.dim, cfg.hidden_dim, cfg.n_layers,
                   cfg.n_heads, cfg.n_kv_heads, cfg.seq_len, int(cfg.shared_classifier), grads.size, len(losses)]
    header[14:16] = np.array([cfg.rope_theta, cfg.norm_eps], dtype="<f4").view("<i4")
    tmp = Path(str(path) + ".tmp")
    parts = (header, np.asarray(x, "<i4"), np.asarray(y, "<i4"), np.asarray(logits, "<f4"), np.array([loss], "<f4"),
             np.asarray(grads, "<f4"), np.asarray(losses, "<f4"))
    with open(tmp, "wb") as f:
        f.writelines(a.tobytes() for a in parts)
    tmp.replace(path)


def make_fixtures(out_dir, names=None, seed=DEFAULT_SEED):
    """Write the fixtures of `names` (default: all of CONFIGS) into out_dir; returns {name: fixture_paths}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    try:
        written = {}
        for name in CONFIGS if names is None else names:
            cfg, B, T, version = CONFIGS[name]
            gen = torch.Generator().manual_seed(seed + list(CONFIGS).index(name))  # whichever names are asked
            weights = init_weights(cfg, gen)
            x = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
            y = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
            paths = fixture_paths(out_dir, name)
            file_weights = {k: v.numpy() for k, v in weights.items()}
            if cfg.shared_classifier:
                file_weights["wcls"] = file_weights["tok_emb"]
            write_llama2c(paths["model"], cfg, file_weights, version)
            weights64 = {k: v.double() for k, v in weights.items()}
            logits, loss, grads = loss_and_grads(cfg, weights64, x, y)
            losses = train_losses(cfg, weights64, x, y)
            write_state(paths["state"], cfg, x.numpy(), y.numpy(), logits.numpy(), loss, grads.numpy(), losses)
            written[name] = paths
        return written
    finally:
        torch.set_num_threads(threads)


def main():
    out_dir = Path(__file__).resolve().parents[1] / "fixtures" / "llama"
    for paths in make_fixtures(out_dir).values():
        for p in paths.values():
            print(f"wrote {p.relative_to(out_dir.parents[2])} ({p.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
