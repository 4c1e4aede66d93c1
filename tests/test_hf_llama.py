"""Hugging Face Llama checkpoints (llmpy.llama.hf_load) against transformers' LlamaForCausalLM.

Tiny random checkpoints are made here with transformers (torch CPU, save_pretrained in fp32, bf16 and fp16,
one file and sharded); llmpy's logits must equal transformers' (run in fp32 over the same weights) within
1e-4 for every config variant the loader handles, and greedy generation must pick the same tokens.
Configs the kernels cannot run, and damaged directories, must be clear LlmpyErrors.
"""

import copy
import json
import shutil

import numba
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmpy.cli import main
from llmpy.errors import LlmpyError
from llmpy.formats.llama2c import read_llama2c
from llmpy.formats.safetensors import read_safetensors, write_safetensors
from llmpy.llama.hf import permute_rope_rows
from llmpy.llama.hf_load import load_hf, unpermute_rope_rows
from llmpy.llama.inference import Transformer

V = 96
BASE = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
        "initializer_range": 0.1, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16, "rope_theta": 500000.0}
VARIANTS = {
    "gqa": {},
    "mqa_tied": {"num_key_value_heads": 1, "tie_word_embeddings": True},
    "mha_head_dim": {"num_key_value_heads": 4, "head_dim": 8, "hidden_size": 32},
    "theta_eps": {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "rms_norm_eps": 1e-5},
    "llama3": {"hidden_size": 64, "num_attention_heads": 4, "rope_parameters": LLAMA3},
    "linear": {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}},
    "eos_list": {"eos_token_id": [2, 5], "num_key_value_heads": 1},
    "9_heads_3_groups": {"hidden_size": 72, "num_attention_heads": 9, "num_key_value_heads": 3,
                         "intermediate_size": 50},  # SmolLM2-135M's head layout; an ffn size not a multiple of 4
    # head_dim other than hidden_size / num_attention_heads (width-pruned Minitron): queries 64 wide over 32 channels,
    # and 32 wide over 64
    "wide_heads": {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
    "narrow_heads": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8},
}
THREADS = numba.config.NUMBA_NUM_THREADS  # fixed: the thread governor must not pick the path under test


def make_checkpoint(path, dtype="float32", shard=None, seed=0, **overrides):
    """save_pretrained a random LlamaForCausalLM; returns the fp32 model (weights rounded to dtype) in eval mode."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**BASE, **overrides})
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))  # norms away from 1, so a swapped norm shows
        for p in model.parameters():  # the weights the file holds (the RoPE buffers stay fp32, as on a load)
            p.copy_(p.to(getattr(torch, dtype)).float())
    kwargs = {"max_shard_size": shard} if shard else {}
    copy.deepcopy(model).to(getattr(torch, dtype)).save_pretrained(path, **kwargs)
    return model


def reference_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def llmpy_logits(path, tokens, **kwargs):
    config, weights = load_hf(path, **kwargs)
    transformer = Transformer(config, weights)
    return transformer.prefill(tokens, logits="all"), transformer


def tokens(n, seed=1):
    return [int(t) for t in np.random.default_rng(seed).integers(0, V, n)]


def test_unpermute_inverts_the_export_permutation():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)
    assert np.array_equal(unpermute_rope_rows(permute_rope_rows(w, 4), 4), w)
    assert np.array_equal(permute_rope_rows(unpermute_rope_rows(w, 4), 4), w)
    # HF row (head 1, second half, i=2) is llama2.c row (head 1, pair 2, second of the pair)
    assert np.array_equal(unpermute_rope_rows(w, 4)[8 + 2 * 2 + 1], w[8 + 4 + 2])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_equal_transformers(tmp_path, variant):
    model = make_checkpoint(tmp_path, **VARIANTS[variant])
    toks = tokens(40)
    want = reference_logits(model, toks)
    got, transformer = llmpy_logits(tmp_path, toks)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    transformer.fused = False  # the layer-by-layer path (BLAS prefill) too
    transformer.max_rows = 16
    got = np.concatenate([transformer.forward(toks[i:i + 16], np.arange(i, min(i + 16, 40)), logits="all")
                          for i in range(0, 40, 16)])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def logits_by_steps(transformer, toks):
    """Logits of every position, forwarded as 20 rows at once (kernels.forward_rows, batched), then calls of 1, 2
    and 3 rows (decode: decode.forward_decode when one_region holds) and one of 5 rows."""
    out, i = [], 0
    for n in (20, 1, 1, 2, 3, 5, 1, 3, 2, 1, 1):
        out.append(transformer.forward(toks[i:i + n], np.arange(i, i + n), logits="all"))
        i += n
    assert i == len(toks)
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", ["wide_heads", "narrow_heads"])
def test_head_dim_on_every_path(tmp_path, variant, dtype):
    """Heads of head_dim != hidden_size / num_attention_heads: transformers' logits through prefill (sgemm), the
    fused rows (4+), decode of 1-3 rows (one parallel region and per-step regions) and the per-layer loop."""
    model = make_checkpoint(tmp_path, dtype=dtype, **VARIANTS[variant])
    config, weights = load_hf(tmp_path)
    QD, C = 4 * VARIANTS[variant]["head_dim"], VARIANTS[variant]["hidden_size"]
    assert config.q_dim == QD != config.dim == C and config.head_size == QD // 4
    assert weights["wq"][1].shape == (QD, C) and weights["wo"][1].shape == (C, QD)
    toks = tokens(40)
    want = reference_logits(model, toks)
    for one_region in (True, False):
        t = Transformer(config, weights, threads=THREADS)
        assert t.dtype == ("bf16" if dtype == "bfloat16" else "fp32")
        np.testing.assert_allclose(t.prefill(toks, logits="all"), want, atol=1e-4, rtol=0)  # 40 rows: sgemm
        if not one_region:
            t.one_region = False
        np.testing.assert_allclose(logits_by_steps(t, toks), want, atol=1e-4, rtol=0)
        if one_region and numba.get_num_threads() >= 2:
            assert t._one_region_for(numba.get_num_threads(), 3), "decode.forward_decode was not taken"
    t.fused = False  # the per-layer loop, a few rows per call
    np.testing.assert_allclose(logits_by_steps(t, toks), want, atol=1e-4, rtol=0)


def test_config_fields(tmp_path):
    make_checkpoint(tmp_path, **VARIANTS["eos_list"], tie_word_embeddings=True)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    config, weights = load_hf(tmp_path)
    assert config.eos_ids == (2, 5, 7) and config.bos_id == 1 and config.shared_classifier
    assert weights["wcls"] is weights["tok_emb"] and config.n_kv_heads == 1
    # the loader's fp32 stacks are the Transformer's: no second copy of the weights during a load
    transformer = Transformer(config, weights)
    packed = weights["packed"]
    assert transformer.wqkv is packed["wqkv"] and transformer.w13 is packed["w13"] and transformer.w2 is packed["w2"]
    assert transformer.tok_emb is weights["tok_emb"] and transformer.wcls is weights["tok_emb"]
    assert np.shares_memory(weights["wq"][1], packed["wqkv"])


def test_old_rope_scaling_key(tmp_path):
    """Configs written before transformers 5: rope_theta and rope_scaling ({"type": ...}) at the top level."""
    model = make_checkpoint(tmp_path, hidden_size=64, rope_parameters=LLAMA3)
    hf = json.loads((tmp_path / "config.json").read_text())
    params = hf.pop("rope_parameters")
    hf["rope_theta"] = params.pop("rope_theta")
    hf["rope_scaling"] = {**params, "type": params.pop("rope_type")}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()  # transformers reads it the same way
    toks = tokens(30)
    want = reference_logits(model, toks)
    np.testing.assert_allclose(reference_logits(again, toks), want, atol=1e-6)
    np.testing.assert_allclose(llmpy_logits(tmp_path, toks)[0], want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_sharded(tmp_path, dtype):
    model = make_checkpoint(tmp_path, dtype=dtype, shard="20KB", num_key_value_heads=1)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    toks = tokens(24)
    np.testing.assert_allclose(llmpy_logits(tmp_path, toks)[0], reference_logits(model, toks), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype, stored, kind", [("bfloat16", np.uint16, "bf16"), ("float16", np.float16, "fp16"),
                                                 ("float32", np.float32, "fp32")])
def test_default_dtype_is_the_stored_one(tmp_path, dtype, stored, kind):
    """A bf16 or fp16 checkpoint stays so (half the bytes per token) unless dtype="fp32" is asked; each equals
    transformers over the same weights."""
    model = make_checkpoint(tmp_path, dtype=dtype, num_key_value_heads=2)
    config, weights = load_hf(tmp_path)
    assert all(weights["packed"][k].dtype == stored for k in ("wqkv", "wo", "w13", "w2"))
    assert weights["tok_emb"].dtype == stored and weights["rms_final"].dtype == np.float32
    toks = tokens(16)
    got = Transformer(config, weights)
    assert got.dtype == kind
    np.testing.assert_allclose(got.prefill(toks, logits="all"), reference_logits(model, toks), atol=1e-4, rtol=0)
    assert load_hf(tmp_path, dtype="fp32")[1]["packed"]["w13"].dtype == np.float32


def test_fp16_refuses_values_beyond_its_range(tmp_path):
    model = make_checkpoint(tmp_path)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.weight"][3, 5] = 7e4  # > 65504
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlmpyError, match="down_proj.weight has values beyond float16's range"):
        load_hf(tmp_path, dtype="fp16")
    assert load_hf(tmp_path, dtype="bf16")[1]["packed"]["w2"].dtype == np.uint16
    del model


@pytest.mark.parametrize("variant", ["llama3", "wide_heads", "narrow_heads"])
def test_greedy_generation_token_identical(tmp_path, variant):
    model = make_checkpoint(tmp_path, **VARIANTS[variant])
    prompt = tokens(8, seed=3)
    want = list(prompt)
    for _ in range(24):  # transformers, no cache: the whole sequence each step
        want.append(int(reference_logits(model, want)[-1].argmax()))
    config, weights = load_hf(tmp_path)
    transformer = Transformer(config, weights)
    got = list(prompt)
    logits = transformer.prefill(prompt)[0]
    for _ in range(24):
        got.append(int(logits.argmax()))
        logits = transformer.forward_token(got[-1], len(got) - 1)
    assert got == want


def test_context_defaults_and_choice(tmp_path):
    make_checkpoint(tmp_path, max_position_embeddings=8192)
    assert load_hf(tmp_path)[0].seq_len == 4096
    assert load_hf(tmp_path, max_seq_len=100)[0].seq_len == 100


# -----------------------------------------------------------------------------
# what the loader refuses


def edit_config(path, **changes):
    hf = json.loads((path / "config.json").read_text())
    hf.update(changes)
    (path / "config.json").write_text(json.dumps(hf))


@pytest.fixture
def checkpoint(tmp_path):
    d = tmp_path / "ckpt"
    make_checkpoint(d)
    return d


@pytest.mark.parametrize("changes, message", [
    ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "not supported"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"sliding_window": 16}, "sliding-window"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "a quantized checkpoint (gptq)"),
    ({"head_dim": 7}, "head_dim 7 is odd"),
    ({"head_dim": 16}, "q_proj.weight has shape (32, 32) but config.json asks for (64, 32)"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "'yarn' is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "needs factor"),
    ({"intermediate_size": 40}, "has shape (48, 32) but config.json asks for (40, 32)"),
    ({"num_hidden_layers": 3}, "model.layers.2."),
    ({"vocab_size": 0}, "vocab_size must be a positive integer"),
    ({"eos_token_id": "x"}, "eos_token_id must be"),
])
def test_unsupported_configs_are_refused(checkpoint, changes, message):
    edit_config(checkpoint, **changes)
    with pytest.raises(LlmpyError, match=None) as e:
        load_hf(checkpoint)
    assert message in str(e.value) and str(checkpoint) in str(e.value)


def test_damaged_directories(tmp_path, checkpoint):
    with pytest.raises(LlmpyError, match="config.json is missing"):
        load_hf(tmp_path)
    (checkpoint / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(LlmpyError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_hf(checkpoint)
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(LlmpyError, match="not valid JSON"):
        load_hf(checkpoint)


def test_missing_shard_and_missing_tensor(tmp_path):
    make_checkpoint(tmp_path, shard="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    moved = tmp_path / "moved"
    shutil.move(tmp_path / shard, moved)
    with pytest.raises(LlmpyError, match=f"{shard} is missing"):
        load_hf(tmp_path)
    shutil.move(moved, tmp_path / shard)
    del index["weight_map"]["model.norm.weight"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LlmpyError, match="tensor model.norm.weight is in none of"):
        load_hf(tmp_path)


def test_unsupported_dtype_and_nonfinite(checkpoint):
    path = checkpoint / "model.safetensors"
    tensors = {k: np.array(v) for k, v in read_safetensors(path)[0].items()}
    norm = tensors["model.norm.weight"]
    for dtype in ("float64", "uint16", "int8"):  # uint16: not to be taken for raw bf16
        tensors["model.norm.weight"] = norm.astype(dtype)
        write_safetensors(path, tensors)
        with pytest.raises(LlmpyError, match=f"model.norm.weight has dtype {dtype}: only fp32, bf16 and fp16"):
            load_hf(checkpoint)
    tensors["model.norm.weight"] = norm
    tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = np.nan
    write_safetensors(path, tensors)
    with pytest.raises(LlmpyError, match="model.layers.1.mlp.up_proj.weight holds a non-finite value"):
        load_hf(checkpoint)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
    write_safetensors(path, tensors)
    with pytest.raises(LlmpyError, match="q_proj.bias .* is not part of"):
        load_hf(checkpoint)


# -----------------------------------------------------------------------------
# export to llama2.c


def test_export_to_llama2c(tmp_path, capsys):
    d = tmp_path / "hf"
    model = make_checkpoint(d, rms_norm_eps=1e-5, num_key_value_heads=1, dtype="bfloat16")
    toks = tokens(20)
    want = reference_logits(model, toks)
    for version in ("v0", "v1", "v2"):
        out = tmp_path / f"model_{version}.bin"
        assert main(["export", str(d), str(out), "--to", version]) == 0
        config, weights, _, _ = read_llama2c(out)
        got = Transformer(config, weights).prefill(toks, logits="all")
        np.testing.assert_allclose(got, want, atol=1e-4 if version != "v2" else 0.05, rtol=0)
    assert "Hugging Face -> v2 (group size 16)" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    ({"rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "rope_theta 500000"),
    ({"rms_norm_eps": 1e-5, "rope_parameters": LLAMA3, "hidden_size": 64}, "llama3 RoPE scaling"),
    ({"rms_norm_eps": 1e-6}, "rms_norm_eps 1e-06"),
    ({"rms_norm_eps": 1e-5, **VARIANTS["wide_heads"]}, "head_dim 16 (run.c's heads are dim / n_heads = 32 / 4)"),
])
def test_export_refuses_what_llama2c_cannot_store(tmp_path, capsys, overrides, message):
    d = tmp_path / "hf"
    make_checkpoint(d, **overrides)
    assert main(["export", str(d), str(tmp_path / "out.bin"), "--to", "v1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "llama2.c file cannot store" in err
    assert not (tmp_path / "out.bin").exists()


def test_llama2c_writer_and_training_refuse_head_dim(tmp_path):
    """llama2.c's header has no head size: the writer refuses such a config (nothing written), so does training."""
    from llmpy.formats.llama2c import write_llama2c
    from llmpy.train.family import LlamaFamily

    make_checkpoint(tmp_path / "hf", **VARIANTS["narrow_heads"], rms_norm_eps=1e-5)  # write_hf's (run.c's) eps
    config, weights = load_hf(tmp_path / "hf", dtype="fp32")
    for version in (0, 1, 2):
        with pytest.raises(LlmpyError, match="a llama2.c file cannot store head_dim 8"):
            write_llama2c(tmp_path / "out.bin", config, weights, version)
        assert not (tmp_path / "out.bin").exists()
    with pytest.raises(LlmpyError, match="training .* needs heads of dim / n_heads"):
        LlamaFamily(config)
    # a Hugging Face directory written back (llmpy.llama.hf) keeps its head_dim
    from llmpy.llama.hf import write_hf

    write_hf(tmp_path / "again", config, {k: w for k, w in weights.items() if k != "packed"})
    assert json.loads((tmp_path / "again" / "config.json").read_text())["head_dim"] == 8
    toks = tokens(12)
    np.testing.assert_array_equal(llmpy_logits(tmp_path / "again", toks)[0],
                                  Transformer(config, weights).prefill(toks, logits="all"))


def test_bf16_load_holds_no_second_copy(tmp_path):
    """Loading converts one tensor at a time into the final fp32 stacks: the allocation peak stays within a
    few tensors of what the Transformer finally holds (a second full fp32 copy would be ~all of it again)."""
    import tracemalloc

    make_checkpoint(tmp_path, dtype="bfloat16", hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                    vocab_size=512, num_key_value_heads=4, max_position_embeddings=16)
    tracemalloc.start()
    try:
        config, weights = load_hf(tmp_path, dtype="fp32")
        transformer = Transformer(config, weights)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest = 4 * max(512 * 128, 256 * 128)  # bytes of the largest tensor in fp32
    arrays = {id(a): a for a in vars(transformer).values() if isinstance(a, np.ndarray)}
    kept = sum(a.nbytes for a in arrays.values())  # weights, KV cache, activations
    assert kept <= held and peak - kept < 3 * largest < kept / 4, (peak, held, kept)
