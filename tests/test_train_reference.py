"""`llmpy train`'s optimization against an independent PyTorch loop (tests/reference/train_torch.py):
same init, same batches, gradient accumulation, weight decay on 2-D weights, clipping, warmup + cosine."""

import io

import numpy as np
import pytest
from conftest import import_reference
from test_train_helpers import tiny_config

from llmpy.data.dataloader import DataLoader
from llmpy.train.loop import Trainer


def test_per_step_losses_match_pytorch(tmp_path):
    train_torch = import_reference("train_torch")
    steps = 12
    cfg = tiny_config(tmp_path, max_steps=steps, total_batch_size=2 * 4 * 16, lr=3e-3, warmup_steps=3,
                      weight_decay=0.1, grad_clip=0.5, val_every=0, gen_tokens=0)
    trainer = Trainer(cfg, stream=io.StringIO())
    init = trainer.model.params.copy()
    ours = trainer.run()["train_losses"]
    loader = DataLoader(cfg.train_data, cfg.batch_size, cfg.seq_len, shuffle=True, seed=cfg.seed)
    theirs, _ = train_torch.train(init, trainer.model_config, iter(loader.next_batch, None), steps, grad_accum=2,
                                  lr=cfg.lr, warmup=cfg.warmup_steps, final_frac=cfg.final_lr_frac,
                                  weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)
    assert theirs[-1] < theirs[0] - 0.3
    np.testing.assert_allclose([ours[s] for s in range(steps)], theirs, rtol=0, atol=2e-4)
    assert ours[0] == pytest.approx(theirs[0], abs=1e-5)
