"""A plain PyTorch Llama 2 (float64, whole sequence at once), the reference the llama tests compare to.

Written from the architecture, not from llmpy: RMSNorm, RoPE on adjacent pairs (as llama2.c's
model.py and run.c), grouped-query attention by repeating k/v heads, SwiGLU, optional untied
classifier. Weights come in llmpy's table (numpy arrays with llama2.c names and shapes).
"""

import math

import torch

EPS = 1e-5
THETA = 10000.0


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope(x, pos):
    # x is (T, nh, hs); rotate each adjacent pair (2i, 2i+1) as a complex number by pos * theta^(-2i/hs)
    T, nh, hs = x.shape
    freqs = 1.0 / THETA ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
    angles = torch.outer(pos.to(torch.float64), freqs)  # (T, hs/2)
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]  # (T, 1, hs/2)
    xc = torch.view_as_complex(x.reshape(T, nh, hs // 2, 2).contiguous())
    return torch.view_as_real(xc * rot).reshape(T, nh, hs)


def llama_logits(config, weights, tokens):
    """logits (T, V) in float64 for one sequence of tokens at positions 0..T-1."""
    w = {k: torch.as_tensor(v[...] if not isinstance(v, list) else v, dtype=torch.float64) for k, v in weights.items()}
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    T = tokens.shape[0]
    C, NH, NKV = config.dim, config.n_heads, config.n_kv_heads
    hs = C // NH
    pos = torch.arange(T)
    mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), diagonal=1)
    x = w["tok_emb"][tokens]  # (T, C)
    for layer in range(config.n_layers):
        h = rmsnorm(x, w["rms_att"][layer])
        q = rope((h @ w["wq"][layer].T).view(T, NH, hs), pos)
        k = rope((h @ w["wk"][layer].T).view(T, NKV, hs), pos)
        v = (h @ w["wv"][layer].T).view(T, NKV, hs)
        k = k.repeat_interleave(NH // NKV, dim=1)  # (T, NH, hs): query head h uses kv head h // (NH/NKV)
        v = v.repeat_interleave(NH // NKV, dim=1)
        att = torch.einsum("tnd,snd->nts", q, k) / math.sqrt(hs) + mask  # (NH, T, T)
        y = torch.einsum("nts,snd->tnd", torch.softmax(att, dim=-1), v).reshape(T, C)
        x = x + y @ w["wo"][layer].T
        h = rmsnorm(x, w["rms_ffn"][layer])
        x = x + (torch.nn.functional.silu(h @ w["w1"][layer].T) * (h @ w["w3"][layer].T)) @ w["w2"][layer].T
    x = rmsnorm(x, w["rms_final"])
    return x @ w["wcls"].T


def greedy(config, weights, prompt, steps):
    """Greedy continuation: the prompt followed by argmax tokens, recomputing the whole sequence each step."""
    tokens = list(prompt)
    while len(tokens) < steps:
        tokens.append(int(llama_logits(config, weights, tokens)[-1].argmax()))
    return tokens


# -----------------------------------------------------------------------------
# tiny fixtures shared by the llama tests (no torch needed below)

TINY_WORDS = ["he", "ll", "llo", "hello", " hello", "wor", "or", "ld", "world", " world", "th", "the", " the",
              "[", "]", "IN", "ST", "INST", "[INST", "[INST]", " [", " [INST]", "/", "/INST", "[/INST]",
              " [/INST]", "<", ">", "<<", ">>", "SYS", "<<SYS>>", "<</SYS>>", "\n", "\n\n"]


def tiny_tokenizer_pieces():
    """(vocab bytes, scores) of a small llama2.c-style vocabulary: <unk> <s> </s>, 256 byte tokens, then
    " ", the printable ASCII letters/punctuation, a few multi-byte code points and merges, the merges
    scored so that longer pieces win, like SentencePiece's."""
    vocab = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    scores = [0.0] * len(vocab)
    for ch in [" "] + [chr(c) for c in range(33, 127)] + ["\u00e9", "\u4e16"]:
        vocab.append(ch.encode())
        scores.append(-1000.0)
    for i, w in enumerate(TINY_WORDS):
        vocab.append(w.encode())
        scores.append(-100.0 + len(w) + 0.01 * i)
    return vocab, scores
