"""GPT-2 inference with a KV cache: each new token costs one position's work, not a whole re-forward.

    cache = KVCache(config, B)
    logits = forward_cached(config, p, cache, tokens, pos)   # tokens (B,t) at positions pos..pos+t-1
    generate(config, params, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, coin=...)

The math is the training forward's (llmpy.gpt2.model), position by position: the keys and values of past
positions are kept per layer in (L, B, NH, maxT, hs) buffers and the new queries attend to them.
Sampling draws one coin in [0, 1) per token from `coin()` (llm.c / run.c's xorshift in llmpy.sampler).

Not handled: batches of prompts of different lengths (samples in a batch share the prompt), beam search.
"""

import math

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.gpt2.layers import gelu_forward, layernorm_forward
from llmpy.gpt2.model import NamedViews, param_shapes
from llmpy.sampler import sample_token


class KVCache:
    def __init__(self, config, B, dtype=np.float32):
        L, NH, C, maxT = config.num_layers, config.num_heads, config.channels, config.max_seq_len
        hs = C // NH
        self.k = np.zeros((L, B, NH, maxT, hs), dtype=dtype)  # keys of every position so far
        self.v = np.zeros((L, B, NH, maxT, hs), dtype=dtype)  # values
        self.B = B


def _layernorm(x, w, b):
    out = np.empty_like(x)
    mean = np.empty(x.shape[:-1], dtype=x.dtype)
    rstd = np.empty(x.shape[:-1], dtype=x.dtype)
    layernorm_forward(out, mean, rstd, x, w, b)
    return out


def forward_cached(config, p, cache, tokens, pos, all_logits=False):
    """Logits (B,V) of the last position (or (B,t,V) with all_logits) for tokens (B,t) int32 that sit at
    positions pos..pos+t-1, after the cache's positions 0..pos-1; their keys/values join the cache."""
    B, t = tokens.shape
    C, NH, V = config.channels, config.num_heads, config.vocab_size
    hs = C // NH
    if pos + t > config.max_seq_len:
        raise LlmpyError(f"generation reached the model's max_seq_len {config.max_seq_len}; ask for fewer tokens")
    scale = 1.0 / math.sqrt(hs)
    x = p.wte[tokens] + p.wpe[pos:pos + t]                                   # (B,t,C)
    # query i (position pos+i) sees keys j <= pos+i
    mask = np.arange(pos + t)[None, :] > (pos + np.arange(t))[:, None]       # (t, pos+t) True = hidden
    for l in range(config.num_layers):
        h = _layernorm(x, p.ln1w[l], p.ln1b[l])                              # (B,t,C)
        qkv = h @ p.qkvw[l].T + p.qkvb[l]                                    # (B,t,3C)
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, t, NH, hs).transpose(0, 2, 1, 3) for i in range(3))
        cache.k[l, :, :, pos:pos + t] = k                                    # (B,NH,t,hs)
        cache.v[l, :, :, pos:pos + t] = v
        keys, values = cache.k[l, :, :, :pos + t], cache.v[l, :, :, :pos + t]  # (B,NH,pos+t,hs)
        att = (q @ keys.transpose(0, 1, 3, 2)) * scale                       # (B,NH,t,pos+t)
        att[..., mask] = -np.inf
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ values).transpose(0, 2, 1, 3).reshape(B, t, C)           # (B,t,C)
        x = x + (y @ p.attprojw[l].T + p.attprojb[l])                        # residual2
        h = _layernorm(x, p.ln2w[l], p.ln2b[l])
        fch = h @ p.fcw[l].T + p.fcb[l]                                      # (B,t,4C)
        fch_gelu = np.empty_like(fch)
        gelu_forward(fch_gelu, fch)
        x = x + (fch_gelu @ p.fcprojw[l].T + p.fcprojb[l])                   # residual3
    if not all_logits:
        x = x[:, -1:]
    lnf = _layernorm(x, p.lnfw, p.lnfb)
    logits = lnf @ p.wte[:V].T                                               # (B,t,V) tied lm_head, real vocab
    return logits if all_logits else logits[:, 0]


def generate(config, params, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, coin=None,
             num_samples=1):
    """prompt + max_new_tokens sampled tokens (a list; a list of lists for num_samples > 1).

    params: the flat parameter buffer; coin(): a float in [0, 1) per sampled token (required unless
    temperature is 0). The prompt must hold at least one token (llm.c starts from <|endoftext|>)."""
    if len(prompt) == 0:
        raise LlmpyError("the prompt must hold at least one token (e.g. <|endoftext|>)")
    if len(prompt) + max_new_tokens > config.max_seq_len:
        raise LlmpyError(f"prompt ({len(prompt)} tokens) + {max_new_tokens} new tokens exceed the model's "
                         f"max_seq_len {config.max_seq_len}")
    if temperature != 0.0 and coin is None:
        raise ValueError("sampling with temperature > 0 needs coin()")
    p = NamedViews(params, param_shapes(config))
    B = num_samples
    cache = KVCache(config, B, params.dtype)
    seqs = [list(prompt) for _ in range(B)]
    tokens = np.tile(np.asarray(prompt, dtype=np.int32), (B, 1))            # (B,len(prompt)): prefill
    pos = 0
    for _ in range(max_new_tokens):
        logits = forward_cached(config, p, cache, tokens, pos)               # (B,V)
        pos += tokens.shape[1]
        nxt = [sample_token(logits[b], temperature, top_k, top_p, coin) for b in range(B)]
        for b in range(B):
            seqs[b].append(nxt[b])
        tokens = np.asarray(nxt, dtype=np.int32)[:, None]                    # (B,1)
    return seqs[0] if num_samples == 1 else seqs
