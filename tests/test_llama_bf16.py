"""bf16 and fp16 weights read as such by the Llama kernels (fp32 sums): the kernels against float64 math on the
rounded weights (widened by PyTorch and NumPy), a bf16 / fp16 Transformer against the fp32 one over the same
rounded weights on every path (prefill, decode of 1-3 rows fused and in one parallel region, batched 4-9 rows,
per layer), and the same IR compiled for CPUs without AVX-512 (AVX2 as on Zen 3, plain SSE2)."""

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numba
import numpy as np
import pytest

from llmpy.errors import LlmpyError
from llmpy.formats.llama2c import write_llama2c
from llmpy.llama import inference
from llmpy.llama.inference import Transformer, as_dtype
from llmpy.llama.kernels import embed_row, matmul_forward, matmul_swiglu_forward, widen_rows
from llmpy.llama.model import LlamaConfig, random_weights
from llmpy.llama.quant import QTensor, quantize_q80

torch = pytest.importorskip("torch")

THREADS = numba.config.NUMBA_NUM_THREADS  # fixed: the thread governor must not pick the path under test
needs_threads = pytest.mark.skipif(numba.get_num_threads() < 2, reason="one parallel region needs 2+ numba threads")

CONFIGS = [  # GQA with an odd vocabulary and hidden % 4 != 0 (SwiGLU after the matmul); MQA, head size 48
    LlamaConfig(96, 70, 2, 4, 2, 67, 80, False),
    LlamaConfig(96, 136, 2, 2, 1, 67, 80, True),
]


def widened(bits, dtype, to=np.float64):
    """Values of stored weights: bf16 bits through PyTorch's bfloat16, fp16 bits through NumPy's float16."""
    if dtype == "bf16":
        wide = torch.float64 if to == np.float64 else torch.float32
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(wide).numpy()
    return bits.view(np.float16).astype(to)


def rounded_weights(weights, dtype):
    """fp32 weights holding the values of the bf16 / fp16 rounding of every matrix (norms stay fp32)."""
    out = {}
    for k, w in weights.items():
        out[k] = w if k.startswith("rms") else widened(as_dtype(w, dtype), dtype).astype(np.float32)
    out["wcls"] = out["tok_emb"] if weights["wcls"] is weights["tok_emb"] else out["wcls"]
    return out


def given(weights, dtype):
    """The weights as a loader gives them: bf16 as uint16 bits, fp16 as float16 (norms fp32)."""
    def one(w):
        return as_dtype(w, "bf16") if dtype == "bf16" else np.asarray(w, np.float16)
    out = {k: w if k.startswith("rms") else one(w) for k, w in weights.items()}
    out["wcls"] = out["tok_emb"] if weights["wcls"] is weights["tok_emb"] else out["wcls"]
    return out


def test_bf16_rounding_is_torchs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(4096).astype(np.float32) * np.float32(3.0)
    special = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7FFFFF, 0x00000001, 0x80000000, 0x7F800000,
                        0xFF800000, 0x3F80FFFF, 0x7FC00001], np.uint32).view(np.float32)  # ties, max, tiny, inf, NaN
    w = np.concatenate([w, special])
    got = as_dtype(w, "bf16")
    want = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(w)
    np.testing.assert_array_equal(got[finite], want[finite])
    assert np.isnan(widened(got[~finite], "bf16")).all()
    assert got.dtype == np.uint16


def test_widening_every_bit_pattern():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    for dtype, stored in (("bf16", bits), ("fp16", bits.view(np.int16))):
        x = np.zeros(65536, np.float32)
        embed_row(x, stored[None], 0)
        np.testing.assert_array_equal(x, widened(stored, dtype, np.float32))
        block = np.zeros((3, 1024), np.float32)
        widen_rows(block, stored.reshape(64, 1024), 5)
        np.testing.assert_array_equal(block, widened(stored, dtype, np.float32).reshape(64, 1024)[5:8])


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("OC,IC", [(37, 45), (130, 200), (24, 64)])  # vector tails of 13, 8 and no columns
def test_matmul_kernels_against_float64(dtype, OC, IC):
    rng = np.random.default_rng(OC)
    w = as_dtype(rng.standard_normal((OC, IC)).astype(np.float32), dtype)
    w13 = as_dtype(rng.standard_normal((2 * 52, IC)).astype(np.float32), dtype)  # H = 52: SwiGLU in the threads
    ref, ref13 = widened(w, dtype), widened(w13, dtype)
    for B in range(1, 10):  # decode (1-3 rows: 8 streams) and batched decode (4-9: blocks of 4 x 4)
        x = rng.standard_normal((B, IC)).astype(np.float32)
        out = np.zeros((B, OC), np.float32)
        matmul_forward(out, x, w)
        want = x.astype(np.float64) @ ref.T
        np.testing.assert_allclose(out, want, rtol=0, atol=2e-6 * np.abs(want).max())
        hb = np.zeros((B, 52), np.float32)
        matmul_swiglu_forward(hb, x, w13)
        h = x.astype(np.float64) @ ref13.T
        want = h[:, :52] / (1.0 + np.exp(-h[:, :52])) * h[:, 52:]
        np.testing.assert_allclose(hb, want, rtol=0, atol=2e-6 * np.abs(want).max())


def _steps(t, rows):
    return np.concatenate([t.forward(tok, pos, st, logits="all") for tok, pos, st in rows])


def _decode_rows(config, rng, start):
    """Calls of 1, 2, 3 rows (three streams side by side), then 4-9 rows (batched: streams several times)."""
    rows = []
    for i, n in enumerate((1, 2, 3, 3, 2, 1)):
        rows.append((rng.integers(0, config.vocab_size, n), np.full(n, start + i), np.arange(n)))
    pos = start + 6
    for n in (4, 7, 9):  # stream s at positions pos, pos + 1, pos + 2 (rows of one stream in order)
        streams = np.arange(n) % 3
        rows.append((rng.integers(0, config.vocab_size, n), pos + np.arange(n) // 3, streams))
        pos += 3
    return rows


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("config", CONFIGS)
def test_transformer_equals_fp32_over_rounded_weights(config, dtype, monkeypatch):
    monkeypatch.setattr(inference, "WIDEN_BYTES", 1)  # prefill widens blocks of 64 rows: several per matrix
    weights = random_weights(config, np.random.default_rng(0), scale=0.15)
    ref = Transformer(config, rounded_weights(weights, dtype), n_streams=3, threads=THREADS)
    if dtype == "bf16":  # fp32 weights rounded on load
        t = Transformer(config, weights, n_streams=3, threads=THREADS, dtype="bf16")
    else:  # float16 weights given are kept (as their bits)
        t = Transformer(config, given(weights, dtype), n_streams=3, threads=THREADS)
    assert t.dtype == dtype and t.wqkv.dtype == t.w2.dtype == t.tok_emb.dtype == inference.STORED[dtype]
    assert t.wcls.dtype == inference.STORED[dtype]
    for m in (ref, t):
        m.one_region = False  # kernels.forward_rows here; decode.forward_decode in the test below
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, config.vocab_size, n) for n in (40, 5, 2)]  # 40 rows: sgemm on widened blocks
    for s, p in enumerate(prompts):
        want, got = ref.prefill(p, stream=s, logits="all"), t.prefill(p, stream=s, logits="all")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    rows = _decode_rows(config, rng, 40)
    want, got = _steps(ref, rows), _steps(t, rows)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert np.abs(want).max() > 0.5
    for m in (ref, t):
        m.fused = False  # the per-layer loop (matmul_forward per matrix)
    rows = _decode_rows(config, rng, 40 + 15)
    want, got = _steps(ref, rows), _steps(t, rows)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@needs_threads
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_one_region_decode(dtype):
    config = CONFIGS[1]
    weights = random_weights(config, np.random.default_rng(2), scale=0.15)
    ref = Transformer(config, rounded_weights(weights, dtype), n_streams=3, threads=THREADS)
    t = Transformer(config, given(weights, dtype), n_streams=3, threads=THREADS)  # the given dtype is kept
    assert t.dtype == dtype
    for m in (ref, t):
        m.forward([1], [0])  # a parallel function has run: the threading layer is known
    assert t._one_region_for(numba.get_num_threads(), 3), "decode.forward_decode is not taken here"
    rows = [r for r in _decode_rows(config, np.random.default_rng(3), 1) if len(r[0]) < 4]
    want, got = _steps(ref, rows), _steps(t, rows)
    assert t.one_region and ref.one_region
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_bf16_reads_half_the_bytes_and_from_file(tmp_path):
    config = CONFIGS[0]
    weights = random_weights(config, np.random.default_rng(4), scale=0.15)
    fp32, bf16 = Transformer(config, weights), Transformer(config, weights, dtype="bf16")
    norms = fp32.rms_att.nbytes + fp32.rms_ffn.nbytes + fp32.rms_final.nbytes
    assert bf16.weight_bytes_per_token() - norms == (fp32.weight_bytes_per_token() - norms) // 2
    path = tmp_path / "model.bin"
    write_llama2c(path, config, weights, 1)  # fp32
    loaded = Transformer.from_file(path, dtype="bf16")
    assert loaded.dtype == "bf16"
    np.testing.assert_array_equal(loaded.prefill([1, 5, 9]), bf16.prefill([1, 5, 9]))
    q8 = Transformer.from_file(path, quantize="q8")
    assert q8.dtype == "int8" and q8.group_size == 2  # dim 96, hidden 70 = 2 * 35: 64 halved until it divides both
    np.testing.assert_array_equal(q8.prefill([1, 5, 9]), Transformer(config, weights, quantize="q8").prefill([1, 5, 9]))
    back = Transformer(config, given(weights, "bf16"), dtype="fp32")
    assert back.wqkv.dtype == np.float32
    np.testing.assert_array_equal(back.prefill([1, 5, 9]), bf16.prefill([1, 5, 9]))


def test_bad_dtypes_are_refused():
    config = CONFIGS[1]
    weights = random_weights(config, np.random.default_rng(5), scale=0.15)
    with pytest.raises(LlmpyError, match="dtype must be one of"):
        Transformer(config, weights, dtype="int4")
    with pytest.raises(LlmpyError, match="a weight of dtype int16"):
        Transformer(config, dict(weights, wq=weights["wq"].astype(np.int16)))
    with pytest.raises(LlmpyError, match="quantize must be None or 'q8'.* with dtype 'bf16'"):
        Transformer(config, weights, dtype="bf16", quantize="q8")
    q = dict(weights)
    for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
        q[k] = [quantize_q80(m, 8) for m in weights[k]]
    with pytest.raises(LlmpyError, match="int8 .Q8_0. weights: leave the dtype out"):
        Transformer(config, q, dtype="bf16")
    with pytest.raises(LlmpyError, match="quantized already"):
        Transformer(config, q, quantize="q8")


FALLBACK = textwrap.dedent("""
    import numba, numpy as np
    from llmpy.llama.inference import as_dtype
    from llmpy.llama.kernels import embed_row, matmul_decode_step, matmul_forward, matmul_tail_rows

    @numba.njit
    def decode(out, x, w):  # matmul_forward's decode loop, serial: its assembly is one function
        Q = w.shape[0] // 8
        for q in range(Q):
            matmul_decode_step(out, x, w, q, Q)
        matmul_tail_rows(out, x, w, 8 * Q)

    rng = np.random.default_rng(0)
    for dtype in ("bf16", "fp16"):
        w = as_dtype(rng.standard_normal((37, 45)).astype(np.float32), dtype)
        ref = (w.astype(np.uint32) << 16).view(np.float32) if dtype == "bf16" else w.view(np.float16)
        for B in (1, 3, 5):
            x = rng.standard_normal((B, 45)).astype(np.float32)
            want = x.astype(np.float64) @ ref.astype(np.float64).T
            for f in (decode, matmul_forward):
                out = np.zeros((B, 37), np.float32)
                f(out, x, w)
                assert np.abs(out - want).max() < 2e-6 * np.abs(want).max(), (dtype, B)
        asm = "".join(decode.inspect_asm(sig) for sig in decode.signatures)
        print(dtype, "zmm" in asm, "ymm" in asm, "vcvtph2ps" in asm)
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)
    x = np.zeros(65536, np.float32)
    embed_row(x, bits[None], 0)
    np.testing.assert_array_equal(x, bits.view(np.float16).astype(np.float32))
""")


@pytest.mark.parametrize("cpu,features,vectors", [
    ("haswell", "+avx2,+fma,+f16c", "ymm"),  # AVX2 as on Zen 3: 16 lanes in two 256-bit registers, vcvtph2ps
    ("x86-64", "+sse2", "xmm"),  # no AVX, no F16C: float16 bits widened by hand
])
def test_kernels_compiled_without_avx512(cpu, features, vectors, tmp_path):
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.split("\n") if line)
    for dtype in ("bf16", "fp16"):
        zmm, ymm, cvt = lines[dtype].split()
        assert zmm == "False"
        assert ymm == str(vectors == "ymm")
        assert cvt == str(dtype == "fp16" and "f16c" in features)


def _matrix_bytes(t):
    return sum(w.q.nbytes if isinstance(w, QTensor) else w.nbytes for w in (t.wqkv, t.wo, t.w13, t.w2))


@pytest.mark.parametrize("packed", [False, True])
def test_conversions_on_load_hold_one_matrix_at_a_time(packed):
    """dtype="bf16" and quantize="q8" on fp32 weights (lists of matrices, or a loader's packed stacks): the logits
    of the same model converted by hand, and no transient fp32 copy of the model (tracemalloc sees NumPy's
    allocations)."""
    config = LlamaConfig(64, 192, 8, 4, 2, 67, 8, False)
    weights = random_weights(config, np.random.default_rng(6), scale=0.15)
    if packed:  # as llmpy.llama.hf_load hands them: stacks in llmpy's layout, used without a copy
        fp32 = Transformer(config, weights)
        weights = dict(weights, packed={"wqkv": fp32.wqkv, "wo": fp32.wo, "w13": fp32.w13, "w2": fp32.w2})
    by_hand = {"bf16": Transformer(config, given(weights, "bf16") if not packed else dict(
        given({k: w for k, w in weights.items() if k != "packed"}, "bf16"),
        packed={k: as_dtype(w, "bf16") for k, w in weights["packed"].items()}))}
    q = {k: [quantize_q80(m, 64) for m in weights[k]] for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}
    by_hand["q8"] = Transformer(config, dict(weights, **q, tok_emb=quantize_q80(weights["tok_emb"], 64),
                                             wcls=quantize_q80(weights["wcls"], 64), packed=None))
    fp32_bytes = sum(weights[k].nbytes for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
    tokens = [1, 5, 9, 2]
    for how, kwargs in (("bf16", {"dtype": "bf16"}), ("q8", {"quantize": "q8"})):
        tracemalloc.start()
        t = Transformer(config, weights, max_rows=4, **kwargs)
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert t.dtype == ("int8" if how == "q8" else "bf16")
        np.testing.assert_array_equal(t.prefill(tokens, logits="all"), by_hand[how].prefill(tokens, logits="all"))
        # what it keeps is the converted stacks (and a small run state); what it held on the way, one matrix's
        # transients, far below a second fp32 copy of the matrices
        assert _matrix_bytes(t) <= kept < 0.6 * fp32_bytes, (how, kept, fp32_bytes)
        assert peak - kept < 0.25 * fp32_bytes, (how, peak, kept, fp32_bytes)
