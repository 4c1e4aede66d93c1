"""Llama forward (fp32 and int8) against the PyTorch float64 reference in tests/reference/llama_torch.py."""

import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from llmpy.formats.llama2c import read_llama2c, write_llama2c
from llmpy.llama.inference import Transformer
from llmpy.llama.model import LlamaConfig, random_weights
from llmpy.llama.quant import dequantize, quantize_q80

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
torch = pytest.importorskip("torch")
import llama_torch

THREADS = numba.config.NUMBA_NUM_THREADS  # fixed: the thread governor must not pick the path under test

# (name, config): with and without GQA, shared and unshared classifier
CONFIGS = [
    ("mha_shared", LlamaConfig(64, 96, 2, 4, 4, 67, 24, True)),
    ("gqa_unshared", LlamaConfig(64, 128, 2, 4, 2, 67, 24, False)),
    ("mqa_shared", LlamaConfig(32, 64, 3, 4, 1, 67, 24, True)),
    # head sizes 48 and 64 (stories15M, 42M/110M): attention through rowdot's head_scores / head_values
    ("hs48_gqa", LlamaConfig(96, 128, 2, 2, 1, 67, 24, True)),
    ("hs64_mha", LlamaConfig(128, 96, 2, 2, 2, 67, 24, False)),
]


def model(config, seed=0):
    return random_weights(config, np.random.default_rng(seed), scale=0.15)


@pytest.mark.parametrize("name,config", CONFIGS)
def test_logits_match_reference_per_position(name, config):
    weights = model(config)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, 17)
    ref = llama_torch.llama_logits(config, weights, tokens).numpy()  # (T, V) float64
    # prefill: the whole prompt in one call
    t = Transformer(config, weights, threads=THREADS)
    prefill = t.prefill(tokens, logits="all")
    assert prefill.dtype == np.float32
    np.testing.assert_allclose(prefill, ref, atol=1e-4, rtol=0)
    # run.c's forward: one token at a time against the KV cache, fused into one numba call and per layer
    for fused in (True, False):
        t = Transformer(config, weights, threads=THREADS)
        t.fused = fused
        step = np.stack([t.forward_token(tok, pos).copy() for pos, tok in enumerate(tokens)])
        np.testing.assert_allclose(step, ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 0.5  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("name,config", CONFIGS[:2])
def test_greedy_generation_matches_reference(name, config):
    weights = model(config, seed=3)
    prompt = [1, 5, 9]
    want = llama_torch.greedy(config, weights, prompt, 20)
    t = Transformer(config, weights, threads=THREADS)
    got = list(prompt)
    logits = t.prefill(prompt)[0]
    while len(got) < 20:
        got.append(int(np.argmax(logits)))
        logits = t.forward_token(got[-1], len(got) - 1)
    assert got == want


def test_batched_streams_equal_single_streams():
    config = CONFIGS[1][1]
    weights = model(config, seed=4)
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, config.vocab_size, n) for n in (5, 9, 2)]
    single = [Transformer(config, weights, threads=THREADS).prefill(s, logits="all") for s in seqs]
    t = Transformer(config, weights, n_streams=3, threads=THREADS)
    for s, seq in enumerate(seqs[:2]):  # prompts of two streams, then lock-step rows of all three
        t.prefill(seq[:2], stream=s)
    t.prefill(seqs[2][:1], stream=2)
    pos = [2, 2, 1]
    got = [[], [], []]
    while any(p < len(s) for p, s in zip(pos, seqs)):
        active = [s for s in range(3) if pos[s] < len(seqs[s])]
        logits = t.forward([seqs[s][pos[s]] for s in active], [pos[s] for s in active], active)
        for row, s in enumerate(active):
            got[s].append(logits[row].copy())
            pos[s] += 1
    for s, start in zip(range(3), (2, 2, 1)):
        np.testing.assert_allclose(np.stack(got[s]), single[s][start:], atol=1e-5, rtol=0)


def test_q80_quantization_roundtrip_error():
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    w[3, :32] = 0.0  # an all-zero group must not produce NaN
    t = quantize_q80(w, 32)
    assert t.q.dtype == np.int8 and t.s.shape == (8, 2) and np.abs(t.q).max() == 127
    back = dequantize(t)
    # symmetric rounding: error at most half a step per group
    err = np.abs(back - w).reshape(8, 2, 32).max(-1)
    assert np.all(err <= t.s / 2 + 1e-7)
    assert np.all(back[3, :32] == 0)


@pytest.mark.parametrize("group_size", [32, 64])  # 64: the decode kernel (linear_q8_decode) for one-token steps
def test_int8_forward_close_to_fp32_and_greedy_agreement(tmp_path, group_size):
    config = LlamaConfig(64, 128, 2, 4, 2, 67, 40, False)
    weights = model(config, seed=6)
    path = tmp_path / "q.bin"
    write_llama2c(path, config, weights, 2, group_size=group_size)
    _, qweights, version, gs = read_llama2c(path)
    assert (version, gs) == (2, group_size)
    tq, tf = Transformer(config, qweights, threads=THREADS), Transformer(config, weights, threads=THREADS)
    assert tq.quantized and not tf.quantized
    tokens = np.random.default_rng(7).integers(0, config.vocab_size, 12)
    lq, lf = tq.prefill(tokens, logits="all"), tf.prefill(tokens, logits="all")
    # one token at a time (the decode kernels) gives the prompt's logits too: the same integer sums per group
    steps = Transformer(config, qweights, threads=THREADS)
    lq1 = np.stack([steps.forward_token(int(tok), pos).copy() for pos, tok in enumerate(tokens)])
    np.testing.assert_allclose(lq1, lq, rtol=0, atol=2e-5 * np.abs(lq).max())
    # int8 weights and activations: logits within a few percent of their spread
    assert np.abs(lq - lf).max() < 0.05 * np.abs(lf).max()
    # greedy: the fp32 continuation, then int8's argmax on that same sequence (teacher forced), and
    # where int8's own free-running greedy output first leaves fp32's
    seqs = []
    for t in (Transformer(config, weights, threads=THREADS), Transformer(config, qweights, threads=THREADS)):
        seq = [1, 7]
        logits = t.prefill(seq)[0]
        while len(seq) < 40:
            seq.append(int(np.argmax(logits)))
            logits = t.forward_token(seq[-1], len(seq) - 1)
        seqs.append(seq)
    fp32_seq = seqs[0]
    forced = Transformer(config, qweights, threads=THREADS).prefill(fp32_seq[:-1], logits="all").argmax(-1)
    agree = np.mean(forced[1:] == np.array(fp32_seq[2:]))
    first_diff = next((i for i, (a, b) in enumerate(zip(*seqs)) if a != b), len(fp32_seq))
    print(f"int8 vs fp32 greedy: teacher-forced argmax agreement {agree:.2f}, free-running identical for "
          f"{first_diff} of {len(fp32_seq)} tokens")
    assert agree >= 0.8


@pytest.mark.parametrize("B", [3, 5])  # matmul_q8 (prefill): row pairs; decode rows: test below
@pytest.mark.parametrize("group_size", [16, 32, 64, 8])  # 8: the scalar path (group sizes other than 16, 32, 64)
def test_int8_matmul_matches_integer_reference(group_size, B):
    from llmpy.llama.quant import matmul_q8, quantize_rows

    rng = np.random.default_rng(8)
    n, G, d = 128, 128 // group_size, 11  # 11 rows: 4 streams of 2 and 3 left over; pairs and an odd one
    x = rng.standard_normal((B, n)).astype(np.float32)
    w = quantize_q80(rng.standard_normal((d, n)).astype(np.float32), group_size)
    xq, xs = np.zeros((B, n), np.int16), np.zeros((B, G), np.float32)
    quantize_rows(xq, xs, x, group_size)
    ref_x = quantize_q80(x, group_size)
    np.testing.assert_array_equal(xq, ref_x.q)
    np.testing.assert_allclose(xs, ref_x.s, rtol=1e-6)
    out = np.zeros((B, d), np.float32)
    matmul_q8(out, xq, xs, w.q, w.s, group_size)
    # integer dot per group, then scaled: exactly what runq.c's matmul computes
    ints = np.einsum("bgk,ogk->bog", xq.astype(np.int64).reshape(B, G, group_size),
                     w.q.astype(np.int64).reshape(d, G, group_size))
    want = (ints * w.s[None] * xs[:, None]).sum(-1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B", [1, 2, 3])
def test_int8_decode_linear_matches_integer_reference(B):
    """linear_q8 for decode rows (group size 64: quantize inside the parallel region, 4 weight streams; on AVX-512
    VNNI machines the unsigned-by-signed byte dot) and its SwiGLU form, against integer sums in NumPy."""
    from llmpy.llama.kernels import linear_q8, linear_q8_decode
    from llmpy.llama.quant import quantize_rows

    rng = np.random.default_rng(10)
    n, G, d, H = 192, 3, 11, 6  # 11 output rows: 4 streams of 2 and 3 left over; SwiGLU over 2H = 12 rows
    x = rng.standard_normal((B, n)).astype(np.float32)
    x[0, :64] = np.where(np.arange(64) % 2, 5.0, -5.0)  # a group at both ends of the int8 range
    w = quantize_q80(rng.standard_normal((d, n)).astype(np.float32), 64)
    w.q[1, :64] = -127  # extreme weights: w + 128 as an unsigned byte is 1 here
    w.q[2, 64:128] = 127
    w13 = quantize_q80(rng.standard_normal((2 * H, n)).astype(np.float32), 64)
    xq_ref, xs_ref = np.zeros((B, n), np.int16), np.zeros((B, G), np.float32)
    quantize_rows(xq_ref, xs_ref, x, 64)
    assert np.abs(xq_ref).max() == 127

    def reference(t):
        ints = np.einsum("bgk,ogk->bog", xq_ref.astype(np.int64).reshape(B, G, 64),
                         t.q.astype(np.int64).reshape(len(t.q), G, 64))
        return (ints * t.s[None].astype(np.float64) * xs_ref[:, None].astype(np.float64)).sum(-1)

    xq, xs = np.zeros((64, n), np.int16), np.zeros((64, G), np.float32)  # scratch: >= 3 rows per thread
    out = np.zeros((B, d), np.float32)
    linear_q8(out, x, w.q, w.s, xq, xs, 2)
    np.testing.assert_allclose(out, reference(w), rtol=1e-5, atol=1e-5)
    hb = np.zeros((B, H), np.float32)
    linear_q8_decode(hb, x, w13.q, w13.s, xq, xs, True, 2)
    h13 = reference(w13)
    g, u = h13[:, :H], h13[:, H:]
    np.testing.assert_allclose(hb, g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-5)


def test_decode_matmuls_match_float64_for_every_row_count():
    """matmul_forward and matmul_swiglu_forward for 1..9 rows (streams for B < 4, 4x4 blocks and the rows left
    over for B >= 4), 11 output rows (OC % 8 and OC % 4 tails), against float64 NumPy."""
    from llmpy.llama.kernels import matmul_forward, matmul_swiglu_forward

    rng = np.random.default_rng(9)
    C, OC, H = 40, 11, 12
    w = rng.standard_normal((OC, C)).astype(np.float32)
    w13 = rng.standard_normal((2 * H, C)).astype(np.float32)
    for B in range(1, 10):
        x = rng.standard_normal((B, C)).astype(np.float32)
        out = np.zeros((B, OC), np.float32)
        matmul_forward(out, x, w)
        np.testing.assert_allclose(out, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)
        h = x.astype(np.float64) @ w13.T.astype(np.float64)  # (B, 2H)
        want = h[:, :H] / (1.0 + np.exp(-h[:, :H])) * h[:, H:]
        got = np.zeros((B, H), np.float32)
        matmul_swiglu_forward(got, x, w13)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
