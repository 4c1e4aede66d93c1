"""GPT-2 between Hugging Face's layout and llm.c's: conversion, round trip, export, download errors."""

import json
import math

import numpy as np
import pytest

from llmpy.cli import main
from llmpy.errors import LlmpyError
from llmpy.formats.llmc import load_checkpoint, save_checkpoint
from llmpy.formats.safetensors import read_safetensors, write_safetensors
from llmpy.gpt2 import hf
from llmpy.gpt2.model import GPT2, GPT2Config, NamedViews, init_params, param_shapes

CFG = GPT2Config(max_seq_len=16, vocab_size=70, padded_vocab_size=128, num_layers=2, num_heads=4, channels=32)


def _params(seed=0):
    params = init_params(CFG, np.random.default_rng(seed))
    p = NamedViews(params, param_shapes(CFG))
    rng = np.random.default_rng(seed + 1)
    for name in ("ln1w", "ln1b", "qkvb", "attprojb", "ln2w", "ln2b", "fcb", "fcprojb", "lnfw", "lnfb"):
        getattr(p, name)[...] += rng.normal(0, 0.1, getattr(p, name).shape)  # make every tensor distinct
    return params


def hf_tensors_written_by_hand(params):
    """What transformers' GPT2LMHeadModel.save_pretrained writes for this model, spelled out here:
    Conv1D weights (in, out), unpadded vocab, a "transformer." prefix, mask buffers, the tied lm_head."""
    p = NamedViews(params, param_shapes(CFG))
    V, T = CFG.vocab_size, CFG.max_seq_len
    t = {"transformer.wte.weight": p.wte[:V], "transformer.wpe.weight": p.wpe,
         "transformer.ln_f.weight": p.lnfw, "transformer.ln_f.bias": p.lnfb, "lm_head.weight": p.wte[:V]}
    for l in range(CFG.num_layers):
        h = f"transformer.h.{l}."
        t |= {h + "ln_1.weight": p.ln1w[l], h + "ln_1.bias": p.ln1b[l],
              h + "attn.c_attn.weight": p.qkvw[l].T, h + "attn.c_attn.bias": p.qkvb[l],
              h + "attn.c_proj.weight": p.attprojw[l].T, h + "attn.c_proj.bias": p.attprojb[l],
              h + "ln_2.weight": p.ln2w[l], h + "ln_2.bias": p.ln2b[l],
              h + "mlp.c_fc.weight": p.fcw[l].T, h + "mlp.c_fc.bias": p.fcb[l],
              h + "mlp.c_proj.weight": p.fcprojw[l].T, h + "mlp.c_proj.bias": p.fcprojb[l],
              h + "attn.bias": np.tril(np.ones((1, 1, T, T), dtype=np.float32)),
              h + "attn.masked_bias": np.array(-1e4, dtype=np.float32)}
    return {k: np.ascontiguousarray(v) for k, v in t.items()}


def hf_forward(t, tokens, NH):
    """HF GPT-2's forward over HF tensors (Conv1D: x @ W + b), float64, for one sequence."""
    t = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in t.items()}

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * t[name + ".weight"] + t[name + ".bias"]

    def conv1d(x, name):
        return x @ t[name + ".weight"] + t[name + ".bias"]

    T = len(tokens)
    x = t["wte.weight"][tokens] + t["wpe.weight"][:T]
    C = x.shape[1]
    hs = C // NH
    for l in range(CFG.num_layers):
        q, k, v = np.split(conv1d(ln(x, f"h.{l}.ln_1"), f"h.{l}.attn.c_attn"), 3, axis=-1)
        q, k, v = (a.reshape(T, NH, hs).transpose(1, 0, 2) for a in (q, k, v))
        att = q @ k.transpose(0, 2, 1) / math.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(T, C)
        x = x + conv1d(y, f"h.{l}.attn.c_proj")
        h = conv1d(ln(x, f"h.{l}.ln_2"), f"h.{l}.mlp.c_fc")
        h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        x = x + conv1d(h, f"h.{l}.mlp.c_proj")
    return ln(x, "ln_f") @ t["wte.weight"].T


def test_hf_file_converts_to_llmc_layout(tmp_path):
    params = _params()
    write_safetensors(tmp_path / "model.safetensors", hf_tensors_written_by_hand(params))
    (tmp_path / "config.json").write_text(json.dumps({"n_head": CFG.num_heads}))
    config, got = hf.load_hf_dir(tmp_path)
    assert config == CFG
    assert np.array_equal(got, params)  # exact: a transpose and a copy


def test_conversion_keeps_the_function(tmp_path):
    params = _params(3)
    t = hf_tensors_written_by_hand(params)
    tokens = np.array([[3, 7, 1, 69, 0, 12, 12, 5]], dtype=np.int32)
    config, converted = hf.hf_to_llmc(t, CFG.num_heads)
    model = GPT2(config, converted, 1, 8, fused=False)
    model.forward(tokens)
    np.testing.assert_allclose(model.logits()[0], hf_forward(t, tokens[0], CFG.num_heads), atol=2e-4, rtol=1e-4)


def test_round_trip_llmc_to_hf_to_llmc_is_identical(tmp_path):
    params = _params(5)
    save_checkpoint(tmp_path / "m.bin", CFG, params)
    assert main(["export", str(tmp_path / "m.bin"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    cfg_json = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg_json["n_head"] == 4 and cfg_json["vocab_size"] == 70 and cfg_json["model_type"] == "gpt2"
    tensors, _ = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert tensors["h.0.attn.c_attn.weight"].shape == (32, 96) and tensors["wte.weight"].shape == (70, 32)
    config, back = hf.load_hf_dir(tmp_path / "hf")
    assert config == CFG and np.array_equal(back, params)
    assert main(["export", str(tmp_path / "m.bin"), str(tmp_path / "x.bin"), "--to", "v2"]) == 2


def test_transformers_loads_the_export(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    params = _params(7)
    hf.export_hf(tmp_path / "hf", CFG, params)
    model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = np.array([[1, 2, 3, 60, 9]], dtype=np.int32)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    ours = GPT2(CFG, params, 1, 5, fused=False)
    ours.forward(tokens)
    np.testing.assert_allclose(ours.logits(), theirs, atol=1e-4, rtol=1e-4)


def test_pretrained_uses_the_converted_cache_and_explains_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no request leaves this test
    with pytest.raises(LlmpyError, match="HF_HUB_OFFLINE.*gpt2_124M.bin"):
        hf.load_pretrained("gpt2", verbose=False)
    # a download that worked once: the converted llm.c copy is used from then on, no network needed
    st_dir = tmp_path / "snapshot"
    st_dir.mkdir()
    params = _params(9)
    write_safetensors(st_dir / "model.safetensors", hf_tensors_written_by_hand(params))
    (st_dir / "config.json").write_text(json.dumps({"n_head": CFG.num_heads}))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: str(st_dir / name))
    _config, got = hf.load_pretrained("gpt2", verbose=False)
    assert np.array_equal(got, params)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    cached = tmp_path / "cache" / "llmpy" / "models" / "gpt2_124M.bin"
    assert load_checkpoint(cached)[0] == CFG
    assert np.array_equal(hf.load_pretrained("gpt2", verbose=False)[1], params)
