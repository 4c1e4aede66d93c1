"""`llmpy export` for llama2.c files: v0 <-> v1 <-> v2 and the Hugging Face layout."""

import json
import math
import struct

import numpy as np
import pytest

from llmpy.cli import main
from llmpy.formats.llama2c import read_llama2c, write_llama2c
from llmpy.llama.model import LlamaConfig, random_weights, weight_shapes
from llmpy.llama.quant import dequantize

CONFIG = LlamaConfig(64, 128, 2, 4, 2, 50, 16, False)


@pytest.fixture
def v0(tmp_path):
    weights = random_weights(CONFIG, np.random.default_rng(0))
    path = tmp_path / "m.bin"
    write_llama2c(path, CONFIG, weights, 0)
    return path, weights


def test_convert_chain(v0, tmp_path, capsys):
    path, weights = v0
    assert main(["export", str(path), str(tmp_path / "v1.bin"), "--to", "v1"]) == 0
    assert main(["export", str(tmp_path / "v1.bin"), str(tmp_path / "v0.bin"), "--to", "v0"]) == 0
    assert (tmp_path / "v0.bin").read_bytes() == path.read_bytes()  # v0 -> v1 -> v0 is lossless
    assert main(["export", str(tmp_path / "v1.bin"), str(tmp_path / "q.bin"), "--to", "v2", "--group-size", "32"]) == 0
    assert "v1 -> v2 (group size 32)" in capsys.readouterr().out
    config, got, version, gs = read_llama2c(tmp_path / "q.bin")
    assert (config, version, gs) == (CONFIG, 2, 32)
    w = dequantize(got["wq"][1])
    assert np.abs(w - weights["wq"][1]).max() <= np.abs(weights["wq"][1]).max() / 127
    # v2 -> v1 dequantizes
    assert main(["export", str(tmp_path / "q.bin"), str(tmp_path / "d.bin"), "--to", "v1"]) == 0
    _, back, _, _ = read_llama2c(tmp_path / "d.bin")
    np.testing.assert_array_equal(back["wq"][1], w)


def test_export_errors(v0, tmp_path, capsys):
    path, _ = v0
    assert main(["export", str(path), str(tmp_path / "q.bin"), "--to", "v2", "--group-size", "48"]) == 2
    assert "group size 48" in capsys.readouterr().err and not (tmp_path / "q.bin").exists()
    assert main(["export", str(path), str(path), "--to", "v1"]) == 2
    gpt2 = tmp_path / "gpt2.bin"
    gpt2.write_bytes(struct.pack("<256i", 20240326, *([0] * 255)))
    try:
        import llmpy.gpt2.hf  # noqa: F401
    except ModuleNotFoundError:
        assert main(["export", str(gpt2), str(tmp_path / "out"), "--to", "hf"]) == 2
        assert "GPT-2 export is not available" in capsys.readouterr().err


def test_hf_export_matches_reference(v0, tmp_path):
    """The HF directory, run with HF's RoPE convention (rotate_half), gives the llama2.c model's logits."""
    torch = pytest.importorskip("torch")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
    import llama_torch

    path, weights = v0
    out = tmp_path / "hf"
    assert main(["export", str(path), str(out), "--to", "hf"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_key_value_heads"], cfg["tie_word_embeddings"]) == (64, 2, False)
    sd = {k: torch.as_tensor(v, dtype=torch.float64)
          for k, v in safetensors_numpy.load_file(out / "model.safetensors").items()}
    tokens = torch.tensor([1, 5, 9, 13, 2, 40])
    T, C, NH, NKV = len(tokens), 64, 4, 2
    hs = C // NH

    def rope_half(x):  # HF LlamaRotaryEmbedding: rotate the two halves of each head
        freqs = 1.0 / 10000.0 ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)
        ang = torch.cat([torch.outer(torch.arange(T, dtype=torch.float64), freqs)] * 2, -1)[:, None, :]
        rot = torch.cat([-x[..., hs // 2:], x[..., :hs // 2]], -1)
        return x * ang.cos() + rot * ang.sin()

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    x = sd["model.embed_tokens.weight"][tokens]
    mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), 1)
    for i in range(CONFIG.n_layers):
        p = f"model.layers.{i}."
        h = norm(x, sd[p + "input_layernorm.weight"])
        q = rope_half((h @ sd[p + "self_attn.q_proj.weight"].T).view(T, NH, hs))
        k = rope_half((h @ sd[p + "self_attn.k_proj.weight"].T).view(T, NKV, hs)).repeat_interleave(2, 1)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(T, NKV, hs).repeat_interleave(2, 1)
        att = torch.softmax(torch.einsum("tnd,snd->nts", q, k) / math.sqrt(hs) + mask, -1)
        x = x + torch.einsum("nts,snd->tnd", att, v).reshape(T, C) @ sd[p + "self_attn.o_proj.weight"].T
        h = norm(x, sd[p + "post_attention_layernorm.weight"])
        g = torch.nn.functional.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)
        x = x + g @ sd[p + "mlp.down_proj.weight"].T
    logits = norm(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T
    ref = llama_torch.llama_logits(CONFIG, weights, tokens.numpy())
    torch.testing.assert_close(logits, ref, atol=1e-9, rtol=1e-9)
    assert set(weight_shapes(CONFIG)) and len(sd) == 2 + 9 * CONFIG.n_layers + 1
