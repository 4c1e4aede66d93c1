"""llmpy bench run's llama.cpp comparison: the GGUF writer read back with gguf's own reader, and llama.cpp's logits on
the written file against our Transformer's (skipped without llama-cpp-python, which CI does not install)."""

import sys

import numpy as np
import pytest

from llmpy.bench.llamacpp import LlamaCpp, compare, gguf_nbytes, logits_difference, vocabulary, write_gguf
from llmpy.bench.run import _decode_rates, _random_packed
from llmpy.errors import LlmpyError
from llmpy.formats.llmc import bf16_to_fp32, fp32_to_bf16
from llmpy.llama.inference import Transformer
from llmpy.llama.model import LlamaConfig
from llmpy.llama.quant import dequantize, quantize_q80

gguf = pytest.importorskip("gguf")


def tiny(tied=True, seed=0):
    """dim 64, 2 layers, GQA 4/2 heads, vocab 512: (config, fp32 weights packed as the bench makes them), with the
    query and key rows 10x larger, so that attention is peaked and positions (RoPE) change the logits: with the
    bench's N(0, 0.02^2) weights attention is nearly uniform and the positions matter little."""
    config = LlamaConfig(dim=64, hidden_dim=192, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, seq_len=64,
                         shared_classifier=tied)
    w = _random_packed(config, np.random.default_rng(seed), tied)
    w["packed"]["wqkv"][:, :config.dim + config.kv_dim] *= np.float32(10.0)
    return config, w


def half_split(w, n_heads):
    """q or k rows (n_heads * hs, C) in llama2.c's adjacent-pair RoPE layout -> Hugging Face's half-split layout
    (what a GGUF writer that forgot llama.cpp's un-permutation would store)."""
    hs = w.shape[0] // n_heads
    return w.reshape(n_heads, hs // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def ours_by_name(config, w):
    """Our fp32 arrays under the GGUF tensor names llama.cpp's converter uses (an independent spelling of the map)."""
    C, KV, H = config.dim, config.kv_dim, config.hidden_dim
    p = w["packed"]
    out = {"token_embd.weight": w["tok_emb"], "output_norm.weight": w["rms_final"]}
    for i in range(config.n_layers):
        out.update({f"blk.{i}.attn_norm.weight": w["rms_att"][i], f"blk.{i}.ffn_norm.weight": w["rms_ffn"][i],
                    f"blk.{i}.attn_q.weight": p["wqkv"][i, :C], f"blk.{i}.attn_k.weight": p["wqkv"][i, C:C + KV],
                    f"blk.{i}.attn_v.weight": p["wqkv"][i, C + KV:], f"blk.{i}.attn_output.weight": p["wo"][i],
                    f"blk.{i}.ffn_gate.weight": p["w13"][i, :H], f"blk.{i}.ffn_up.weight": p["w13"][i, H:],
                    f"blk.{i}.ffn_down.weight": p["w2"][i]})
    if not config.shared_classifier:
        out["output.weight"] = w["wcls"]
    return out


def field(reader, key):
    return reader.get_field(key).contents()


def written(tmp_path, kind, tied):
    """(config, weights, gguf.GGUFReader) of a tiny model written as GGUF of `kind`."""
    config, w = tiny(tied=tied)
    path = tmp_path / "m.gguf"
    write_gguf(path, config, w, kind)
    return config, w, gguf.GGUFReader(path)


def test_gguf_metadata_and_f32_tensors(tmp_path):
    config, w, r = written(tmp_path, "F32", tied=False)
    assert field(r, "general.architecture") == "llama"
    assert field(r, "general.file_type") == 0
    expect = {"llama.context_length": 64, "llama.embedding_length": 64, "llama.block_count": 2,
              "llama.feed_forward_length": 192, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
              "llama.rope.dimension_count": 16, "llama.vocab_size": 512, "tokenizer.ggml.bos_token_id": 1,
              "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
    assert {k: field(r, k) for k in expect} == expect
    assert field(r, "llama.rope.freq_base") == 10000.0
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == np.float32(1e-5)
    assert field(r, "tokenizer.ggml.model") == "llama"
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 512 and len(set(tokens)) == 512
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and tokens[3 + 10] == "<0x0A>"
    types = field(r, "tokenizer.ggml.token_type")
    assert types[:4] == [2, 3, 3, 6] and types[258] == 6 and types[259] == 1
    ours = ours_by_name(config, w)
    assert [t.name for t in r.tensors] == list(ours_by_order(config, ours))
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(t.data).reshape(ours[t.name].shape), ours[t.name])
        assert list(t.shape) == list(reversed(ours[t.name].shape))  # ggml's ne: columns first
    assert (tmp_path / "m.gguf").stat().st_size >= gguf_nbytes(config, w, "F32")


def ours_by_order(config, ours):
    """The converter's tensor order: embedding, per layer attn_norm q k v output ffn_norm gate up down, output."""
    names = ["token_embd.weight"]
    for i in range(config.n_layers):
        names += [f"blk.{i}.{k}.weight" for k in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                   "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    names.append("output_norm.weight")
    return names + (["output.weight"] if "output.weight" in ours else [])


def test_gguf_bf16_is_our_bf16_rounding(tmp_path):
    config, w, r = written(tmp_path, "BF16", tied=True)
    assert field(r, "general.file_type") == 32
    ours = ours_by_name(config, w)
    assert sorted(t.name for t in r.tensors) == sorted(ours)  # tied: no output.weight
    for t in r.tensors:
        if t.name.endswith("norm.weight"):  # norms stay F32, as llama.cpp's converter keeps them
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(t.data), ours[t.name])
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.BF16
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(ours[t.name].shape)
        np.testing.assert_array_equal(got, bf16_to_fp32(fp32_to_bf16(ours[t.name])))


def test_gguf_q8_0_blocks(tmp_path):
    config, w, r = written(tmp_path, "Q8_0", tied=False)
    assert field(r, "general.file_type") == 7
    ours = ours_by_name(config, w)
    for t in r.tensors:
        x = ours[t.name]
        if x.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
        raw = np.asarray(t.data).reshape(-1, 34)  # a block: fp16 scale, then 32 int8 values
        blocks = x.reshape(-1, 32)
        d = raw[:, :2].copy().view(np.float16)[:, 0]
        np.testing.assert_array_equal(d, (np.abs(blocks).max(1) / 127).astype(np.float16))
        q = raw[:, 2:].copy().view(np.int8)
        assert np.abs(q).max() == 127
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(x.shape)
        np.testing.assert_array_equal(got.reshape(-1, 32), q * d[:, None].astype(np.float32))
        # half a step, plus the fp16 rounding of the scale the values were not quantized with (127 * 2^-11 steps)
        assert np.all(np.abs(got - x).reshape(-1, 32) <= 0.57 * d[:, None].astype(np.float32))
        # our Q8_0 (groups of 64, fp32 scales) of the same weights: the two differ by about one of our steps at most
        mine = quantize_q80(x, 64)
        step = np.repeat(mine.s, 64, axis=-1)
        assert np.all(np.abs(got - dequantize(mine)) <= 1.1 * step)


def test_gguf_writer_refuses(tmp_path):
    config, w = tiny()
    path = tmp_path / "m.gguf"
    path.write_bytes(b"keep")
    with pytest.raises(LlmpyError, match="exists"):
        write_gguf(path, config, w, "F32")
    assert path.read_bytes() == b"keep"
    with pytest.raises(LlmpyError, match="F32, BF16 or Q8_0"):
        write_gguf(tmp_path / "n.gguf", config, w, "Q4_0")
    with pytest.raises(LlmpyError, match="259 tokens"):
        vocabulary(100)
    bad = dict(w, tok_emb=w["tok_emb"].astype(np.float16))
    with pytest.raises(LlmpyError, match="fp32"):
        write_gguf(tmp_path / "o.gguf", config, bad, "F32")
    assert not (tmp_path / "n.gguf").exists() and not (tmp_path / "o.gguf").exists()


def test_unavailable_says_how_to_install(monkeypatch):
    from llmpy.bench.llamacpp import unavailable

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    assert "pip install llama-cpp-python gguf" in unavailable()


# -----------------------------------------------------------------------------
# llama.cpp itself (llama-cpp-python builds llama.cpp from source: not in CI)

def llama_cpp_or_skip():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")


def our_logits(t, tokens):
    return np.stack([t.forward([tok], [pos])[0].copy() for pos, tok in enumerate(tokens)])


@pytest.mark.parametrize("tied,use_mmap", [(True, False), (False, True)])
def test_llama_cpp_f32_logits_equal_ours(tmp_path, tied, use_mmap):
    llama_cpp_or_skip()
    config, w = tiny(tied=tied, seed=1)
    path = tmp_path / "m.gguf"
    write_gguf(path, config, w, "F32")
    ours = Transformer(config, w, threads=2)
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, 24)
    tokens[0] = 1
    expect = our_logits(ours, tokens)
    with LlamaCpp(path, n_threads=2, n_ctx=config.seq_len, exact_attention=True, use_mmap=use_mmap) as lcpp:
        got = np.stack([lcpp.forward([tok], [pos])[0].copy() for pos, tok in enumerate(tokens)])
        # a second sequence from position 0 (the bench's next round) starts afresh
        again = lcpp.forward([tokens[0]], [0])[0].copy()
    assert got.shape == expect.shape and got.dtype == np.float32
    scale = np.abs(expect).max(1, keepdims=True)
    assert np.abs(got - expect).max() / scale.min() < 1e-4, np.abs(got - expect).max()
    np.testing.assert_array_equal(again, got[0])


def test_llama_cpp_sees_a_wrong_rope_layout(tmp_path):
    """The equality above is no accident of the weights: q/k rows written in the half-split layout move llama.cpp's
    logits by far more than its tolerance."""
    llama_cpp_or_skip()
    config, w = tiny(seed=1)
    C, KV = config.dim, config.kv_dim
    wrong = {k: v.copy() for k, v in w["packed"].items()}
    for layer in range(config.n_layers):
        wrong["wqkv"][layer, :C] = half_split(wrong["wqkv"][layer, :C], config.n_heads)
        wrong["wqkv"][layer, C:C + KV] = half_split(wrong["wqkv"][layer, C:C + KV], config.n_kv_heads)
    path = tmp_path / "m.gguf"
    write_gguf(path, config, dict(w, packed=wrong), "F32")
    with LlamaCpp(path, n_threads=2, n_ctx=config.seq_len, exact_attention=True) as lcpp:
        assert logits_difference(Transformer(config, w, threads=2), lcpp) > 1e-2


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_llama_cpp_default_attention_close_to_ours(tmp_path, kind):
    """llama.cpp's defaults (f16 KV cache) on F32 / BF16 / Q8_0 files against our fp32 / bf16 / int8 within the
    bench's parity tolerance, and far from a different model's logits."""
    llama_cpp_or_skip()
    from llmpy.bench.llamacpp import GGUF_TYPES, PARITY_TOLERANCE

    config, w = tiny(seed=3)
    path = tmp_path / "m.gguf"
    write_gguf(path, config, w, GGUF_TYPES[kind])
    options = {"fp32": {}, "bf16": {"dtype": "bf16"}, "int8": {"quantize": "q8"}}[kind]
    ours = Transformer(config, w, threads=2, **options)
    other = Transformer(*tiny(seed=4), threads=2, **options)
    with LlamaCpp(path, n_threads=2, n_ctx=config.seq_len) as lcpp:
        diff = logits_difference(ours, lcpp)
        assert diff <= PARITY_TOLERANCE[kind] / 3, diff
        assert logits_difference(other, lcpp) > 0.5


def test_compare_rows(tmp_path):
    llama_cpp_or_skip()
    config, w = tiny(seed=5)
    ts = [Transformer(config, w), Transformer(config, w, dtype="bf16"), Transformer(config, w, quantize="q8")]
    rows = compare(config, w, ts, tokens=8, repeats=1, decode_rates=_decode_rates)
    assert [r[:2] for r in rows] == [["fp32", "F32"], ["bf16", "BF16"], ["int8", "Q8_0"]]
    for kind, gtype, ours, theirs, ratio, per_round, diff, problem in rows:
        assert problem is None, problem
        assert ours > 0 and theirs > 0 and ratio == pytest.approx(ours / theirs) and per_round > 0
