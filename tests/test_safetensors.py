"""Our safetensors reader/writer against the `safetensors` package (the reference implementation)."""

import struct

import numpy as np
import pytest

from llmpy.errors import LlmpyError
from llmpy.formats.safetensors import read_safetensors, write_safetensors

st_numpy = pytest.importorskip("safetensors.numpy")

TENSORS = {
    "a.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "b": np.arange(-5, 5, dtype=np.int64),
    "c": np.linspace(-2, 2, 6, dtype=np.float16).reshape(2, 3),
    "d": np.array([True, False, True]),
    "e": np.arange(7, dtype=np.uint8),
    "f": np.zeros((0, 3), dtype=np.float32),
    "g": np.float64(3.5) * np.ones((2, 2, 2)),
    "h": np.array(2.0, dtype=np.float32),  # a scalar: shape []
}


def test_ours_written_reference_read(tmp_path):
    path = write_safetensors(tmp_path / "ours.safetensors", TENSORS, {"format": "pt", "note": "x"})
    got = st_numpy.load_file(str(path))
    assert set(got) == set(TENSORS)
    for k, v in TENSORS.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k
    from safetensors import safe_open
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}


def test_reference_written_ours_read(tmp_path):
    path = tmp_path / "ref.safetensors"
    st_numpy.save_file(TENSORS, str(path), metadata={"format": "np"})
    got, meta = read_safetensors(path)
    assert meta == {"format": "np"}
    for k, v in TENSORS.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def test_bf16_against_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    save_file({"x": x}, str(tmp_path / "bf.safetensors"))
    got, _ = read_safetensors(tmp_path / "bf.safetensors")
    assert got["x"].dtype == np.float32
    assert np.array_equal(got["x"], x.float().numpy())
    write_safetensors(tmp_path / "ours_bf.safetensors", {"x": x.float().numpy()}, bf16={"x"})
    from safetensors.torch import load_file
    assert torch.equal(load_file(str(tmp_path / "ours_bf.safetensors"))["x"], x)


def test_corrupt_files_are_rejected(tmp_path):
    good = write_safetensors(tmp_path / "good.safetensors", {"a": np.ones(4, dtype=np.float32)})
    raw = good.read_bytes()
    cases = {
        "short": raw[:5],
        "huge_header": struct.pack("<Q", 10**9) + raw[8:],
        "not_json": raw[:8] + b"{" * (len(raw) - 8),
        "truncated": raw[:-4],
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(LlmpyError, match="safetensors|too short"):
            read_safetensors(p)
