"""KV-cache generation against the full (training) forward."""

import numpy as np
import pytest

from llmpy.errors import LlmpyError
from llmpy.gpt2.generate import KVCache, forward_cached, generate
from llmpy.gpt2.model import GPT2, GPT2Config, NamedViews, init_params, param_shapes
from llmpy.sampler import random_f32

CFG = GPT2Config(max_seq_len=24, vocab_size=70, padded_vocab_size=128, num_layers=2, num_heads=4, channels=32)


def _params(seed=0):
    return init_params(CFG, np.random.default_rng(seed))


def test_cached_forward_equals_full_forward():
    params = _params()
    x = np.random.default_rng(1).integers(0, CFG.vocab_size, (3, 20)).astype(np.int32)
    model = GPT2(CFG, params, 3, 20, fused=False)
    model.forward(x)
    full = model.logits().copy()
    p, cache = NamedViews(params, param_shapes(CFG)), KVCache(CFG, 3)
    parts = [forward_cached(CFG, p, cache, x[:, :7], 0, all_logits=True)]          # prefill 7, then 1 at a time
    parts += [forward_cached(CFG, p, cache, x[:, t:t + 1], t, all_logits=True) for t in range(7, 20)]
    cached = np.concatenate(parts, axis=1)
    assert cached.dtype == np.float32 and cached.shape == full.shape
    np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-4)


def test_greedy_generation_equals_refeeding_the_whole_sequence():
    params = _params(2)
    # make the model peaky so argmax is well separated
    params *= 8.0
    prompt = [5, 9, 1]
    got = generate(CFG, params, prompt, 12, temperature=0.0)
    seq = list(prompt)
    for _ in range(12):
        model = GPT2(CFG, params, 1, len(seq), fused=False)
        model.forward(np.array([seq], dtype=np.int32))
        seq.append(int(np.argmax(model.logits()[0, -1])))
    assert got == seq


def test_sampling_is_seeded_and_batched():
    params = _params(3)

    def coins(seed):
        state = [seed]

        def coin():
            c, state[0] = random_f32(state[0])
            return c
        return coin
    a = generate(CFG, params, [0], 10, temperature=1.0, top_k=5, coin=coins(42))
    b = generate(CFG, params, [0], 10, temperature=1.0, top_k=5, coin=coins(42))
    c = generate(CFG, params, [0], 10, temperature=1.0, top_k=5, coin=coins(43))
    assert a == b and a != c and len(a) == 11
    many = generate(CFG, params, [0], 10, temperature=1.0, top_p=0.9, coin=coins(1), num_samples=4)
    assert len(many) == 4 and len({tuple(s) for s in many}) > 1


def test_too_long_generation_is_rejected():
    with pytest.raises(LlmpyError, match="exceed the model's max_seq_len 24"):
        generate(CFG, _params(), [0] * 20, 10, temperature=0.0)
