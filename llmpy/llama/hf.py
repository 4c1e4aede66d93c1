"""Write a llama2.c model as a Hugging Face Llama directory: config.json + model.safetensors (fp32).

Hugging Face's Llama applies RoPE to the two halves of each head (rotate_half) while llama2.c
rotates adjacent pairs, so wq and wk rows are permuted within each head: HF row (h, half, i) is
llama2.c row (h, 2i + half) (the permutation llama2.c's export.py applies for its hf export).
The safetensors file is written directly (an 8-byte header length, a JSON header, raw data).

Reading Hugging Face checkpoints: llmpy/llama/hf_load.py (with unpermute_rope_rows, the inverse below).
Not handled: writing dtypes other than fp32.
"""

import json
from pathlib import Path

import numpy as np

from llmpy.fileio import atomic_write_text
from llmpy.formats.llama2c import ROPE_THETA, _fp32
from llmpy.formats.safetensors import write_safetensors
from llmpy.llama.inference import RMS_EPS


def permute_rope_rows(w, n_heads):
    """(n_heads*hs, C) llama2.c pair-interleaved rows -> Hugging Face half-split rows, per head."""
    out_dim, C = w.shape
    hs = out_dim // n_heads
    return w.reshape(n_heads, hs // 2, 2, C).transpose(0, 2, 1, 3).reshape(out_dim, C)


def hf_state_dict(config, weights):
    """name -> fp32 array in Hugging Face LlamaForCausalLM naming."""
    w = {k: _fp32(v) for k, v in weights.items()}
    sd = {"model.embed_tokens.weight": w["tok_emb"], "model.norm.weight": w["rms_final"]}
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = w["rms_att"][i]
        sd[p + "self_attn.q_proj.weight"] = permute_rope_rows(w["wq"][i], config.n_heads)
        sd[p + "self_attn.k_proj.weight"] = permute_rope_rows(w["wk"][i], config.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = w["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = w["wo"][i]
        sd[p + "post_attention_layernorm.weight"] = w["rms_ffn"][i]
        sd[p + "mlp.gate_proj.weight"] = w["w1"][i]
        sd[p + "mlp.down_proj.weight"] = w["w2"][i]
        sd[p + "mlp.up_proj.weight"] = w["w3"][i]
    if not config.shared_classifier:
        sd["lm_head.weight"] = w["wcls"]
    return sd


def write_hf(out_dir, config, weights):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.seq_len,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_THETA,
        "hidden_act": "silu",
        "tie_word_embeddings": config.shared_classifier,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    if config.q_dim != config.dim:
        hf_config["head_dim"] = config.head_size
    tensors = {name: np.asarray(a, dtype=np.float32) for name, a in hf_state_dict(config, weights).items()}
    write_safetensors(out_dir / "model.safetensors", tensors)
    atomic_write_text(out_dir / "config.json", json.dumps(hf_config, indent=2) + "\n")
