"""llama2.c model files v0/v1/v2: write -> read round trips, layouts, and bad input."""

import struct

import numpy as np
import pytest

from llmpy.errors import LlmpyError
from llmpy.formats.llama2c import MAGIC, read_header, read_llama2c, rope_tables, write_llama2c
from llmpy.llama.model import LlamaConfig, count_parameters, random_weights, weight_shapes
from llmpy.llama.quant import QTensor, dequantize

CONFIGS = [LlamaConfig(32, 64, 2, 4, 2, 40, 16, True), LlamaConfig(32, 96, 3, 4, 4, 40, 16, False)]


def fp32(w):
    return np.stack([dequantize(x) for x in w]) if isinstance(w, list) else dequantize(w) if isinstance(
        w, QTensor) else np.asarray(w)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("version", [0, 1])
def test_fp32_roundtrip_identical(tmp_path, config, version):
    weights = random_weights(config, np.random.default_rng(0))
    path = tmp_path / "m.bin"
    write_llama2c(path, config, weights, version)
    got_config, got, got_version, gs = read_llama2c(path)
    assert (got_config, got_version, gs) == (config, version, None)
    for name in weight_shapes(config):
        np.testing.assert_array_equal(got[name], weights[name], err_msg=name)
    assert (got["wcls"] is got["tok_emb"]) == config.shared_classifier
    assert isinstance(got["wq"], np.memmap) or isinstance(got["wq"].base, np.memmap)  # memory-mapped, not read
    header = 28 if version == 0 else 256
    rope = 2 * config.seq_len * config.head_size // 2 if version == 0 else 0
    assert path.stat().st_size == header + 4 * (count_parameters(config) + rope)


def test_v0_layout_matches_run_c(tmp_path):
    # run.c reads: 7 ints (vocab negative when unshared), tok_emb, rms_att, wq, ..., rms_final, freq_cis, wcls
    config = CONFIGS[1]
    weights = random_weights(config, np.random.default_rng(1))
    path = tmp_path / "m.bin"
    write_llama2c(path, config, weights, 0)
    raw = path.read_bytes()
    assert struct.unpack_from("<7i", raw) == (32, 96, 3, 4, 4, -40, 16)
    data = np.frombuffer(raw, np.float32, offset=28)
    n_emb = 40 * 32
    np.testing.assert_array_equal(data[:n_emb], weights["tok_emb"].ravel())
    np.testing.assert_array_equal(data[n_emb:n_emb + 3 * 32], weights["rms_att"].ravel())
    np.testing.assert_array_equal(data[-40 * 32:], weights["wcls"].ravel())
    cos, _ = rope_tables(config)
    np.testing.assert_array_equal(data[-40 * 32 - 2 * cos.size:-40 * 32 - cos.size], cos.ravel())


def test_v1_v2_headers(tmp_path):
    config = CONFIGS[0]
    weights = random_weights(config, np.random.default_rng(2))
    write_llama2c(tmp_path / "v1.bin", config, weights, 1)
    write_llama2c(tmp_path / "v2.bin", config, weights, 2, group_size=16)
    h1, h2 = (tmp_path / "v1.bin").read_bytes()[:256], (tmp_path / "v2.bin").read_bytes()[:256]
    assert struct.unpack_from("<Ii7iB", h1) == (MAGIC, 1, 32, 64, 2, 4, 2, 40, 16, 1) and h1[37:] == bytes(219)
    assert struct.unpack_from("<Ii7iBi", h2) == (MAGIC, 2, 32, 64, 2, 4, 2, 40, 16, 1, 16) and h2[41:] == bytes(215)
    assert h1[:4] == b"24ka"  # "ak42" as a little-endian uint32
    # v1 puts the norms first: rms_att (L, C) right after the header
    np.testing.assert_array_equal(np.frombuffer(tmp_path.joinpath("v1.bin").read_bytes(), np.float32, 64, 256),
                                  weights["rms_att"].ravel())


@pytest.mark.parametrize("config", CONFIGS)
def test_v2_within_quantization_error(tmp_path, config):
    weights = random_weights(config, np.random.default_rng(3))
    path = tmp_path / "q.bin"
    write_llama2c(path, config, weights, 2, group_size=32)
    got_config, got, version, gs = read_llama2c(path)
    assert (got_config, version, gs) == (config, 2, 32)
    for name in weight_shapes(config):
        w, back = weights[name], fp32(got[name])
        if name.startswith("rms"):
            np.testing.assert_array_equal(back, w)  # norms stay fp32
            continue
        step = np.abs(w).reshape(-1, 32).max(-1) / 127  # one quantization step per group
        err = np.abs(back - w).reshape(-1, 32).max(-1)
        assert np.all(err <= step / 2 + 1e-7), name
    # writing v2 again from the v2 tensors is byte-identical (no requantization drift)
    write_llama2c(tmp_path / "q2.bin", config, got, 2, group_size=32)
    assert (tmp_path / "q2.bin").read_bytes() == path.read_bytes()


def test_bad_files(tmp_path):
    config = CONFIGS[0]
    weights = random_weights(config, np.random.default_rng(4))
    good = tmp_path / "good.bin"
    write_llama2c(good, config, weights, 1)
    raw = good.read_bytes()
    cases = {
        "truncated": (raw[:-4], "truncated or not a llama2.c"),
        "extra": (raw + b"\0" * 8, "truncated or not a llama2.c"),
        "version": (raw[:4] + struct.pack("<i", 7) + raw[8:], "unknown llama2.c file version 7"),
        "short": (raw[:10], "too short"),
        "dims": (raw[:8] + struct.pack("<i", -32) + raw[12:], "must be positive"),
        "heads": (raw[:20] + struct.pack("<i", 3) + raw[24:], "divide evenly"),
    }
    for name, (data, message) in cases.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(data)
        with pytest.raises(LlmpyError, match=message) as e:
            read_header(p)
        assert str(p) in str(e.value)
    with pytest.raises(LlmpyError, match="group size 24 must divide"):
        write_llama2c(tmp_path / "x.bin", config, weights, 2, group_size=24)
    assert not (tmp_path / "x.bin").exists() and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(LlmpyError, match="unknown llama2.c version"):
        write_llama2c(tmp_path / "y.bin", config, weights, 3)
