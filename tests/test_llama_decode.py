"""Decode in one parallel region per token (llmpy/llama/decode.py) against the per-step parallel regions of
kernels.forward_rows, and its way out when the threads do not meet at a barrier."""

import time

import numba
import numpy as np
import pytest

from llmpy.llama import decode
from llmpy.llama.inference import Transformer
from llmpy.llama.model import LlamaConfig, random_weights
from llmpy.llama.quant import quantize_q80

THREADS = numba.config.NUMBA_NUM_THREADS  # fixed: the thread governor must not pick the path under test

needs_threads = pytest.mark.skipif(numba.get_num_threads() < 2, reason="one parallel region needs 2+ numba threads")

CONFIGS = [  # head size 48 with GQA; MQA with 3 layers; hidden 128 and 64 (% 4 == 0)
    LlamaConfig(192, 128, 2, 4, 1, 67, 24, True),
    LlamaConfig(64, 64, 3, 4, 1, 67, 24, False),
]
HEAD_DIM_CONFIGS = [  # heads wider (queries 128 wide over 64 channels) and narrower (64 over 128) than dim / n_heads
    LlamaConfig(64, 64, 2, 4, 2, 67, 24, True, head_dim=32),
    LlamaConfig(128, 64, 2, 4, 2, 67, 24, False, head_dim=16),
]


def _weights(config, int8):
    w = random_weights(config, np.random.default_rng(0), scale=0.15)
    if int8:
        for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            w[k] = [quantize_q80(m, 64) for m in w[k]]
        w["tok_emb"] = quantize_q80(w["tok_emb"], 64)
        w["wcls"] = w["tok_emb"] if config.shared_classifier else quantize_q80(w["wcls"], 64)
    return w


def _steps(t, rows):
    """Logits of forward calls of the given (tokens, positions, streams) rows, one call per entry."""
    return [t.forward(tok, pos, st).copy() for tok, pos, st in rows]


@needs_threads
@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("config", CONFIGS + HEAD_DIM_CONFIGS)
def test_one_region_decode_equals_per_step_regions(config, int8):
    w = _weights(config, int8)
    rng = np.random.default_rng(1)
    rows = []  # 1, 2 and 3 rows per call: three streams decoding side by side, then one stream two tokens at a time
    for pos in range(8):
        n = 1 + pos % 3
        rows.append((rng.integers(0, config.vocab_size, n), np.full(n, pos), np.arange(n)))
    for pos in range(8, 20, 2):
        rows.append((rng.integers(0, config.vocab_size, 2), np.array([pos, pos + 1]), np.zeros(2, np.int64)))
    ref = Transformer(config, w, n_streams=3, threads=THREADS)
    ref.one_region = False
    t = Transformer(config, w, n_streams=3, threads=THREADS)
    t.forward([1], [0])  # a parallel function has run: the threading layer is known
    assert t._one_region_for(numba.get_num_threads(), 1), "decode.forward_decode is not taken here"
    want, got = _steps(ref, rows), _steps(t, rows)
    assert t.one_region
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
    np.testing.assert_array_equal(t.key_cache, ref.key_cache)


@needs_threads
def test_barrier_gives_up_when_a_thread_never_comes():
    config = CONFIGS[1]
    t = Transformer(config, _weights(config, False))
    t.forward([1], [0])
    c = config
    nt = numba.get_num_threads() + 1  # one iteration more than threads: the barrier waits for a thread that is busy
    priv = np.zeros((nt, 2, 1, c.dim), np.float32)
    sync = np.zeros(decode.SYNC_SIZE, np.int64)
    acts = (t.x, t.xb, t.xb2, t.qkv, t.att, t.atty, t.hb13, t.hb, t.xf)
    weights = (t.tok_emb, t.rms_att, t.wqkv, t.wo, t.rms_ffn, t.w13, t.w2, t.rms_final, t.wcls[None])
    start = time.perf_counter()
    ok = decode.forward_decode(t.logits[:1], np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros(1, np.int64),
                               np.ones(1, np.int64), acts, priv, weights, None, (t._no_xq, t._no_rows), t.key_cache,
                               t.value_cache, t.cos, t.sin, c.n_heads, c.n_kv_heads, 1e-5, sync, nt)
    assert not ok
    assert time.perf_counter() - start < 30


@needs_threads
def test_transformer_runs_the_token_again_when_the_region_gives_up(monkeypatch):
    config = CONFIGS[0]
    w = _weights(config, False)
    ref = Transformer(config, w, threads=THREADS)
    ref.one_region = False
    t = Transformer(config, w, threads=THREADS)
    t.forward([1], [0])
    ref.forward([1], [0])
    monkeypatch.setattr(decode, "forward_decode", lambda *args: False)
    got = t.forward([5], [1]).copy()
    assert t.one_region is False
    np.testing.assert_array_equal(got, ref.forward([5], [1]))
