"""Hugging Face Llama checkpoints loaded as Q8_0 (quantize="q8") or bf16 (dtype="bf16"), and `run --quantize q8`,
`--dtype bf16` for them and for llama2.c files.

The reference for q8 is quantize_q80 applied here to each fp32 matrix (and the embedding table) of the fp32
load, in groups of 64 halved until they divide dim, hidden_dim and the query width; for bf16 the Transformer's
own rounding of the fp32 load. Logits must be identical. Loading quantizes a block of rows at a time straight from the
safetensors memory map: tracemalloc's peak stays within about one fp32 tensor of what the model keeps.
"""

import sys
import tracemalloc
from pathlib import Path

import numba
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_hf_llama import THREADS, VARIANTS, logits_by_steps, make_checkpoint, reference_logits, tokens

from llmpy.cli import main
from llmpy.errors import LlmpyError
from llmpy.llama import hf_load
from llmpy.llama.hf_load import load_hf
from llmpy.llama.inference import Transformer
from llmpy.llama.quant import QTensor, quantize_q80

sys.path.insert(0, str(Path(__file__).resolve().parent))

MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def group_size(dim, hidden_dim, q_dim):
    gs = 64
    while dim % gs or hidden_dim % gs or q_dim % gs:
        gs //= 2
    return gs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("overrides", [
    {},  # hidden 32, ffn 48: groups of 16; untied
    {"hidden_size": 128, "intermediate_size": 192, "tie_word_embeddings": True},  # groups of 64; tied
    VARIANTS["wide_heads"],  # queries 64 wide over 32 channels
    {"hidden_size": 128, "intermediate_size": 192, "num_attention_heads": 4, "head_dim": 8},  # queries 32 wide: 32
])
def test_q8_on_load_equals_quantizing_the_fp32_load(tmp_path, dtype, overrides):
    make_checkpoint(tmp_path, dtype=dtype, **overrides)
    config, fp32 = load_hf(tmp_path, dtype="fp32")
    gs = group_size(config.dim, config.hidden_dim, config.q_dim)
    by_hand = {k: [quantize_q80(np.array(m), gs) for m in fp32[k]] for k in MATRICES}
    emb = quantize_q80(fp32["tok_emb"], gs)
    wcls = emb if config.shared_classifier else quantize_q80(fp32["wcls"], gs)
    want = Transformer(config, dict(fp32, **by_hand, tok_emb=emb, wcls=wcls, packed=None))
    config_q, q8 = load_hf(tmp_path, quantize="q8")
    assert config_q == config and isinstance(q8["packed"]["wqkv"], QTensor) and q8["packed"]["wqkv"].group_size == gs
    for k in MATRICES:
        for layer, m in enumerate(q8[k]):
            np.testing.assert_array_equal(m.q, by_hand[k][layer].q)
            np.testing.assert_array_equal(m.s, by_hand[k][layer].s)
    got = Transformer(config_q, q8)
    assert got.dtype == "int8"
    seq = tokens(12)
    np.testing.assert_array_equal(got.prefill(seq, logits="all"), want.prefill(seq, logits="all"))
    # bf16 on load: the fp32 load rounded by the Transformer
    config_b, b16 = load_hf(tmp_path, dtype="bf16")
    assert b16["packed"]["w13"].dtype == np.uint16
    np.testing.assert_array_equal(Transformer(config_b, b16).prefill(seq, logits="all"),
                                  Transformer(config, fp32, dtype="bf16").prefill(seq, logits="all"))


@pytest.mark.parametrize("head_dim", [64, 16])
def test_q8_head_dim_close_to_transformers_on_every_path(tmp_path, head_dim):
    """Q8_0 in groups of 64 (the int8 decode kernels) with queries 256 and 64 wide over 128 channels: within
    quantization error of transformers' fp32 logits (~5% of their range, as without head_dim), and the fused rows and
    decode of 1-3 rows equal to the prefill (the exact Q8_0 reference: test_q8_on_load_equals_quantizing_...)."""
    model = make_checkpoint(tmp_path, hidden_size=128, intermediate_size=192, num_attention_heads=4,
                            head_dim=head_dim)
    config, q8 = load_hf(tmp_path, quantize="q8")
    assert q8["packed"]["wo"].q.shape == (2, 128, 4 * head_dim) and q8["packed"]["wo"].group_size == 64
    toks = tokens(40)
    want = reference_logits(model, toks)
    t = Transformer(config, q8, threads=THREADS)
    prefill = t.prefill(toks, logits="all")
    np.testing.assert_allclose(prefill, want, atol=0.1 * np.abs(want).max(), rtol=0)
    np.testing.assert_allclose(logits_by_steps(t, toks), prefill, atol=1e-5, rtol=0)
    if numba.get_num_threads() >= 2:
        assert t._one_region_for(numba.get_num_threads(), 3), "decode.forward_decode was not taken"


def test_q8_load_of_bf16_holds_one_tensor_beyond_the_int8_model(tmp_path, monkeypatch):
    """The peak of load + Transformer stays within ~one fp32 tensor of what the int8 Transformer keeps (the embedding
    table the Transformer dequantizes is the largest transient); an fp32 copy of the model would be ~4x the int8."""
    make_checkpoint(tmp_path, dtype="bfloat16", hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                    vocab_size=512, num_key_value_heads=4, max_position_embeddings=16)
    monkeypatch.setattr(hf_load, "BLOCK_ELEMENTS", 4096)  # blocks much smaller than a tensor, as in a real model
    tracemalloc.start()
    try:
        config, weights = load_hf(tmp_path, quantize="q8")
        transformer = Transformer(config, weights, max_rows=4)  # a small run state
        del weights
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest = 4 * 512 * 128  # bytes of the largest tensor (the embedding table) in fp32
    fp32_model = 4 * (6 * (128 * 128 * 2 + 2 * 128 * 128 + 3 * 128 * 256) + 2 * 512 * 128)
    int8 = sum(w.q.nbytes + w.s.nbytes for w in (transformer.wqkv, transformer.wo, transformer.w13, transformer.w2))
    assert int8 < held < fp32_model / 2, (int8, held, fp32_model)
    assert peak - held < 1.25 * largest, (peak, held, largest)


def test_load_arguments_are_checked(tmp_path):
    make_checkpoint(tmp_path)
    with pytest.raises(LlmpyError, match="dtype must be None or one of"):
        load_hf(tmp_path, dtype="fp8")
    with pytest.raises(LlmpyError, match="quantize must be None or 'q8'"):
        load_hf(tmp_path, quantize="q4")


def test_run_quantize_and_dtype_on_a_hugging_face_directory(tmp_path, capsysbinary):
    from test_hf_llama_tokenizer import model_dir

    from llmpy.llama.generate import generate
    from llmpy.sampler import Sampler
    from llmpy.tokenizers.hf import HFTokenizer

    model_dir(tmp_path, "tinyllama", hidden_size=64, intermediate_size=128)
    config, fp32 = load_hf(tmp_path, dtype="fp32")
    tok = HFTokenizer.load(tmp_path, config.vocab_size)
    for flags, kwargs in ((["--quantize", "q8"], {"quantize": "q8"}), (["--dtype", "bf16"], {"dtype": "bf16"})):
        assert main(["run", str(tmp_path), "-t", "0", "-n", "24", "-i", "Once upon", *flags]) == 0
        out = capsysbinary.readouterr().out
        want = generate(Transformer(config, fp32, **kwargs), tok, Sampler(config.vocab_size, 0.0, 0.9, 1),
                        "Once upon", 24, stop_ids=config.eos_ids)
        assert out == want.text + b"\n", flags
    assert main(["run", str(tmp_path), "--quantize", "q8", "--dtype", "bf16", "-i", "hi"]) == 2
    assert b"give one" in capsysbinary.readouterr().err


def test_run_past_the_context_of_a_hugging_face_directory(tmp_path, capsysbinary):
    """The README's commands: --context N -n beyond it stops with the notice; --context-shift goes on (q8 too)."""
    from test_hf_llama_tokenizer import model_dir

    model_dir(tmp_path, "tinyllama", hidden_size=64, intermediate_size=128)
    argv = ["run", str(tmp_path), "-t", "0", "--context", "24", "-n", "60", "-i", "Once upon"]
    assert main(argv) == 0
    stopped = capsysbinary.readouterr()
    assert b"[context full" in stopped.err
    for flags in (["--context-shift"], ["--context-shift", "--quantize", "q8"]):
        assert main([*argv, *flags]) == 0
        shifted = capsysbinary.readouterr()
        assert b"[context full" not in shifted.err and len(shifted.out) > len(stopped.out), flags
