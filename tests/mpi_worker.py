"""A program that tests/test_dist.py and tests/test_dist_train.py start under `mpirun -np 2` (or alone): a tiny
GPT-2 (or Llama) trained data-parallel with llmpy.dist, results written by rank 0 to an .npz.

    python tests/mpi_worker.py MODE OUT [B] [FAMILY]      # FAMILY: gpt2 (default) or llama

MODE: train (stage 0 and ZeRO-1 on the same data, plus an in-run save/restore of the state),
fail (rank 1 raises mid-step), config (ranks disagree on the config), resume (rank 1's state is bad).
Every rank reads its own B rows of a global batch of N*B rows, exactly as the DataLoader slices it.
"""

import sys

import numpy as np

from llmpy.dist import init_dist, make_optimizer
from llmpy.errors import LlmpyError
from llmpy.gpt2.model import GPT2Config
from llmpy.gpt2.model import init_params as gpt2_init_params
from llmpy.llama.train_model import init_params as llama_init_params
from llmpy.llama.train_model import make_config
from llmpy.optim import clip_scale
from llmpy.train.family import GPT2Family, LlamaFamily

CONFIG = GPT2Config(max_seq_len=16, vocab_size=61, padded_vocab_size=64, num_layers=2, num_heads=2, channels=16)
# the same vocabulary (global_batch draws from CONFIG's); grouped-query attention, an unshared classifier
LLAMA_CONFIG = make_config(dim=16, n_layers=2, n_heads=4, vocab_size=61, max_seq_len=16, n_kv_heads=2,
                           shared_classifier=False)
FAMILIES = {"gpt2": (GPT2Family(CONFIG), gpt2_init_params), "llama": (LlamaFamily(LLAMA_CONFIG), llama_init_params)}
T = 8
STEPS = 4
SAVE_AT = 2   # the save/restore check snapshots the state after this many steps
MAX_NORM = 0.5  # small enough that clipping is active, so the global norm matters
ADAMW = {"lr": 3e-3, "weight_decay": 0.1}


def global_batch(step, rows):
    """(rows, T) inputs and targets of this step, the same on every rank and in the reference."""
    tokens = np.random.default_rng(1000 + step).integers(0, CONFIG.vocab_size, size=(rows, T + 1))
    tokens = tokens.astype(np.int32)
    return tokens[:, :-1].copy(), tokens[:, 1:].copy()


def train_step(dist, model, opt, step, B):
    """One data-parallel step; returns the loss averaged over all ranks and the global grad norm (before
    clipping: unlike AdamW's update, it shows a gradient summed instead of averaged)."""
    x, y = global_batch(step, dist.world_size * B)
    rows = slice(dist.rank * B, (dist.rank + 1) * B)
    loss = model.forward(x[rows], y[rows])
    model.zero_grad()
    model.backward()
    opt.reduce_gradients(model.grads)
    norm = opt.global_grad_norm(model.grads)
    opt.step(model.params, model.grads, grad_scale=clip_scale(norm, MAX_NORM))
    return dist.allreduce_scalar(loss) / dist.world_size, norm


def make_run(dist, zero_stage, B, family="gpt2"):
    family, init_params = FAMILIES[family]
    model = family.build(init_params(family.config, np.random.default_rng(0)), B, T)
    opt = make_optimizer(dist, zero_stage, family.num_parameters, decay_ranges=family.decay_ranges(), **ADAMW)
    return model, opt


def train(dist, zero_stage, B, steps=STEPS, family="gpt2"):
    """(losses, grad norms) (steps, 2), final params, per-rank m sizes, and whether a restart from the
    step-SAVE_AT state reproduces the last steps bit for bit."""
    model, opt = make_run(dist, zero_stage, B, family)
    losses, snapshot = [], None
    for step in range(steps):
        losses.append(train_step(dist, model, opt, step, B))
        if step + 1 == SAVE_AT:
            snapshot = model.params.copy(), {k: np.copy(v) for k, v in opt.state_dict().items()}
    # restart: a fresh model and optimizer from the snapshot, as after a kill
    model2, opt2 = make_run(dist, zero_stage, B, family)
    model2.params[...] = snapshot[0]
    opt2.load_state_dict(snapshot[1])
    resumed = [train_step(dist, model2, opt2, step, B) for step in range(SAVE_AT, steps)]
    exact = resumed == losses[SAVE_AT:] and np.array_equal(model2.params, model.params) and \
        np.array_equal(opt2.m, opt.m) and np.array_equal(opt2.v, opt.v) and opt2.t == opt.t
    exact = dist.allreduce_scalar(0.0 if exact else 1.0, "max") == 0.0
    return np.array(losses), model.params.copy(), np.array(dist.allgather(opt.m.size)), exact


def main(mode, out, B, family="gpt2"):
    dist = init_dist()
    with dist.abort_on_error():
        if mode == "train":
            results = {}
            for z in (0, 1):
                losses, params, m_sizes, exact = train(dist, z, B, family=family)
                results.update({f"losses{z}": losses, f"params{z}": params, f"m_sizes{z}": m_sizes,
                                f"resume_exact{z}": exact})
            results["threads"] = np.array(dist.allgather(dist.threads or 0))
            if dist.is_master:
                np.savez(out, world_size=dist.world_size, **results)
        elif mode == "fail":
            model, opt = make_run(dist, 0, B)
            for step in range(STEPS):
                if dist.rank == 1 and step == 1:
                    raise RuntimeError("the data shard of rank 1 is unreadable (a test failure)")
                train_step(dist, model, opt, step, B)
        elif mode == "config":
            dist.check_same(f"d2 lr=3e-3 seed={1337 + dist.rank}", "the run config")
        elif mode == "resume":
            model, opt = make_run(dist, 1, B)
            state = opt.state_dict()
            if dist.rank == 1:   # as if this rank's state file came from a 4-rank run
                state = dict(state, world_size=4)
            error = None
            try:
                opt.load_state_dict(state, source=f"{out}.rank{dist.rank}")
            except LlmpyError as e:
                error = str(e)
            dist.check_all(error)
            train_step(dist, model, opt, 0, B)
        else:
            raise ValueError(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    try:   # what llmpy's command line does with an LlmpyError
        sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2, *sys.argv[4:5]))
    except LlmpyError as e:
        print(f"mpi_worker: error: {e}", file=sys.stderr)
        sys.exit(2)
