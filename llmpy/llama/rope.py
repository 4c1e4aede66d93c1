"""RoPE tables for inference: cos and sin of pos * inv_freq[j] for every position and pair, with the
frequency scalings of Hugging Face Llama configs.

    inv_freq[j] = theta ** (-2j / hs)                      j = 0 .. hs/2 - 1 (run.c's freq)
    linear:  inv_freq / factor                             (positions interpolated: "linear" rope_scaling)
    llama3:  Llama 3.1's rule (transformers' _compute_llama3_parameters): with wavelen = 2 pi / inv_freq,
             low = original_max_position_embeddings / low_freq_factor, high = ... / high_freq_factor,
             wavelen < high: unchanged; wavelen > low: inv_freq / factor; in between
             (1 - s) * inv_freq / factor + s * inv_freq,  s = (original / wavelen - low_freq_factor)
                                                               / (high_freq_factor - low_freq_factor)

config.rope_scaling is None or a dict with "rope_type" ("linear" or "llama3") and its parameters
(llmpy.llama.hf_load.rope_scaling_from normalizes both of Hugging Face's config spellings).
The tables are computed in float64 and rounded to fp32 once.

Not handled: dynamic NTK, YaRN, LongRoPE, partial rotary factors (hf_load refuses them).
"""

import math

import numpy as np

from llmpy.errors import LlmpyError

ROPE_TYPES = ("linear", "llama3")


def inv_frequencies(head_size, theta, scaling=None):
    """(hs/2,) float64 inverse frequencies, scaled as `scaling` (a rope_scaling dict or None) says."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)  # (hs/2,)
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low_factor, high_factor = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        original = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = original / low_factor, original / high_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low_factor) / (high_factor - low_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled)
    raise LlmpyError(f"rope_type {kind!r} is not supported (only {', '.join(ROPE_TYPES)})")


def rope_tables(config):
    """(cos, sin), each (seq_len, head_size / 2) fp32, for config's head size, rope_theta and rope_scaling."""
    inv_freq = inv_frequencies(config.head_size, config.rope_theta, getattr(config, "rope_scaling", None))
    angles = np.outer(np.arange(config.seq_len, dtype=np.float64), inv_freq)  # (T, hs/2)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
