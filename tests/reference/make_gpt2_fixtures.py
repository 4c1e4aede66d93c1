"""Write the GPT-2 test fixtures (llm.c model checkpoints, debug states, 10-step losses) for odd configs.

    python tests/reference/make_gpt2_fixtures.py            # rewrites tests/fixtures/gpt2/

For each config NAME in CONFIGS it writes:
    NAME_model.bin         v3 checkpoint (fp32 params: llm.c's init plus nonzero biases and LN weights)
    NAME_model_bf16.bin    v5 checkpoint of the same params rounded to bfloat16 (round to nearest even)
    NAME_state.bin         debug state for NAME_model.bin, computed in float64, stored as fp32
    NAME_losses.txt        losses before each of 10 AdamW steps (lr 1e-4, betas 0.9/0.999, eps 1e-8, wd 0.01
                           on every parameter, no clipping), float64 reference
    NAME_state_bf16.bin    and NAME_losses_bf16.txt: the same, computed from the bf16-rounded params, so that the
                           bf16 checkpoint is checked exactly as tightly as the fp32 one (no relaxed tolerance)
Everything comes from a seeded torch generator, so the files are the same on every run.
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpt2_torch as ref

DEFAULT_SEED = 1337
TRAIN_STEPS = 10

# name -> (config, B, T): odd sizes on purpose (V not a multiple of 128, C/NH odd, T < maxT and T == maxT)
CONFIGS = {
    "v67_l2_h3_c48": (ref.RefConfig(max_seq_len=16, vocab_size=67, padded_vocab_size=128,
                                    num_layers=2, num_heads=3, channels=48), 2, 11),
    "v100_l1_h1_c32": (ref.RefConfig(max_seq_len=8, vocab_size=100, padded_vocab_size=128,
                                     num_layers=1, num_heads=1, channels=32), 3, 8),
    "v128_l3_h4_c40": (ref.RefConfig(max_seq_len=32, vocab_size=128, padded_vocab_size=128,
                                     num_layers=3, num_heads=4, channels=40), 2, 17),
}


def fixture_paths(out_dir, name):
    out_dir = Path(out_dir)
    return {
        "model": out_dir / f"{name}_model.bin",
        "model_bf16": out_dir / f"{name}_model_bf16.bin",
        "state": out_dir / f"{name}_state.bin",
        "state_bf16": out_dir / f"{name}_state_bf16.bin",
        "losses": out_dir / f"{name}_losses.txt",
        "losses_bf16": out_dir / f"{name}_losses_bf16.txt",
    }


def _write_state_and_losses(state_path, losses_path, cfg, params32, x, y):
    # the reference runs in float64 from the exact float32 params the checkpoint holds
    params64 = torch.from_numpy(params32.astype(np.float64))
    logits, loss, grads = ref.loss_and_grads(params64, cfg, x, y)
    ref.write_state(state_path, cfg, x.numpy(), y.numpy(), logits.numpy(), loss.item(), grads.numpy())
    losses = ref.train_losses(params64, cfg, x, y, steps=TRAIN_STEPS)
    tmp = Path(str(losses_path) + ".tmp")
    tmp.write_text("".join(f"{loss:.17g}\n" for loss in losses))
    tmp.replace(losses_path)
    return losses


def make_fixtures(out_dir, names=None, seed=DEFAULT_SEED):
    """Write the fixtures of `names` (default: all of CONFIGS) into out_dir; returns {name: fixture_paths}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead (and summation-order differences)
    try:
        return _make_fixtures(out_dir, names, seed)
    finally:
        torch.set_num_threads(threads)


def _make_fixtures(out_dir, names, seed):
    written = {}
    for name in CONFIGS if names is None else names:
        cfg, B, T = CONFIGS[name]
        gen = torch.Generator().manual_seed(seed + list(CONFIGS).index(name))  # the same whichever names are asked
        params32 = ref.init_params(cfg, gen, dtype=torch.float32, perturb=True).numpy()
        x = torch.randint(0, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
        y = torch.randint(0, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
        paths = fixture_paths(out_dir, name)
        ref.write_model(paths["model"], cfg, params32, dtype="float32")
        ref.write_model(paths["model_bf16"], cfg, params32, dtype="bfloat16")
        _write_state_and_losses(paths["state"], paths["losses"], cfg, params32, x, y)
        params_bf16 = ref.bf16_bits_to_float32(ref.float32_to_bf16_bits(params32))
        _write_state_and_losses(paths["state_bf16"], paths["losses_bf16"], cfg, params_bf16, x, y)
        written[name] = paths
    return written


def main():
    out_dir = Path(__file__).resolve().parents[1] / "fixtures" / "gpt2"
    for paths in make_fixtures(out_dir).values():
        for p in paths.values():
            print(f"wrote {p.relative_to(out_dir.parents[2])} ({p.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
