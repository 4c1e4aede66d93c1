"""The Llama engine end to end against the PyTorch reference's fixtures (tests/fixtures/llama/, written by
tests/reference/make_llama_fixtures.py): the files' layout read independently, `llmpy test-llama` on every fixture,
on corrupted copies (exit 1) and on broken files (exit 2), llmpy's debug-state writer against the reference's
bytes, and live regeneration with torch.
"""

import itertools
import re

import numpy as np
import pytest
from conftest import FIXTURES_DIR, import_reference, patched_copy

LLAMA_FIXTURES = FIXTURES_DIR / "llama"
STATE_MAGIC, STATE_VERSION = 20260416, 1
HEADER_BYTES = 1024
# name -> (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, shared, B, T, file version),
# restated here so that this file reads the bytes independently of the writers
FIXTURE_CONFIGS = {
    "gqa6over2_v67": (24, 32, 2, 6, 2, 67, 16, True, 2, 9, 0),
    "mqa_untied_v91": (32, 48, 2, 4, 1, 91, 12, False, 3, 7, 1),
    "hs48_untied_v50": (48, 24, 1, 1, 1, 50, 8, False, 2, 5, 0),
}
NAMES = tuple(FIXTURE_CONFIGS)
STEPS = 10
STEP_LINE = re.compile(r"step (\d+): loss (\d+\.\d{6}) \(reference (\d+\.\d{6})\) OK")


def param_sizes(name):
    """name -> element count of each stored parameter, in llama2.c's v0 order."""
    C, H, L, NH, NKV, V, _, shared, *_ = FIXTURE_CONFIGS[name]
    KV = NKV * (C // NH)
    sizes = {"tok_emb": V * C, "rms_att": L * C, "wq": L * C * C, "wk": L * KV * C, "wv": L * KV * C,
             "wo": L * C * C, "rms_ffn": L * C, "w1": L * H * C, "w2": L * C * H, "w3": L * H * C, "rms_final": C}
    if not shared:
        sizes["wcls"] = V * C
    return sizes


def paths(name, base=LLAMA_FIXTURES):
    return base / f"{name}_model.bin", base / f"{name}_state.bin"


def read_state(path):
    """An independent reading: (header, x, y, logits, loss, grads, losses)."""
    raw = path.read_bytes()
    h = np.frombuffer(raw[:HEADER_BYTES], "<i4")
    B, T, V, n, steps = (int(h[i]) for i in (2, 3, 4, 12, 13))
    ints = np.frombuffer(raw[HEADER_BYTES:HEADER_BYTES + 8 * B * T], "<i4")
    f = np.frombuffer(raw[HEADER_BYTES + 8 * B * T:], "<f4")
    assert f.size == B * T * V + 1 + n + steps
    return (h, ints[:B * T].reshape(B, T), ints[B * T:].reshape(B, T), f[:B * T * V].reshape(B, T, V),
            float(f[B * T * V]), f[B * T * V + 1:B * T * V + 1 + n], f[B * T * V + 1 + n:])


# ------------------------------------------------------------------------------------------------------------
# (a) the committed files

@pytest.mark.parametrize("name", NAMES)
def test_fixture_files_layout(name):
    C, H, L, NH, NKV, V, maxT, shared, B, T, version = FIXTURE_CONFIGS[name]
    n = sum(param_sizes(name).values())
    model, state = paths(name)
    ints = [C, H, L, NH, NKV, V if shared else -V, maxT]
    if version == 0:  # 7 ints, the weights, the RoPE tables (seq_len * hs/2 floats each), wcls if unshared
        assert list(np.fromfile(model, "<i4", count=7)) == ints
        assert model.stat().st_size == 28 + 4 * (n + maxT * (C // NH))
    else:  # "ak42", version 1, 7 ints, the shared flag, padding to 256 bytes, then the weights
        head = np.fromfile(model, "<i4", count=9)
        assert head[0] == 0x616B3432 and list(head[1:]) == [1, C, H, L, NH, NKV, V, maxT]
        assert model.stat().st_size == 256 + 4 * n

    h, x, y, logits, loss, grads, losses = read_state(state)
    assert list(h[:14]) == [STATE_MAGIC, STATE_VERSION, B, T, V, C, H, L, NH, NKV, maxT, int(shared), n, STEPS]
    assert list(h[14:16].view("<f4")) == [np.float32(1e4), np.float32(1e-5)] and not h[16:].any()
    assert T < maxT and x.min() >= 0 and x.max() < V and y.min() >= 0 and y.max() < V
    lg = logits.astype(np.float64)  # the stored loss is the mean cross-entropy of the stored logits
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    assert abs((lse - np.take_along_axis(lg, y[..., None], -1)[..., 0]).mean() - loss) < 1e-5
    assert abs(losses[0] - loss) < 1e-6
    assert all(a > b for a, b in itertools.pairwise(losses)), "AdamW steps on one batch should lower the loss"
    offset = 0
    for pname, size in param_sizes(name).items():  # every parameter gets a gradient well above rounding
        assert np.abs(grads[offset:offset + size]).max() > 1e-3, pname
        offset += size


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in LLAMA_FIXTURES.iterdir())
    assert total < 500_000, f"fixtures take {total:,} bytes"


@pytest.mark.parametrize("name", NAMES)
def test_llmpy_writer_rewrites_the_reference_bytes(tmp_path, name):
    from llmpy.cli.test_llama import load
    from llmpy.formats.llama_debug import save_llama_debug_state

    model, state = paths(name)
    config, _params, s = load(model, state)
    out = tmp_path / "state.bin"
    save_llama_debug_state(out, config, s.x, s.y, s.logits, s.loss, s.grads, s.losses)
    assert out.read_bytes() == state.read_bytes()


# ------------------------------------------------------------------------------------------------------------
# (b) llmpy test-llama

def run_test_llama(capsys, model, state, *extra):
    from llmpy.cli import main

    capsys.readouterr()
    rc = main(["test-llama", "--model", str(model), "--state", str(state), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def check_passing_run(rc, out, err, state):
    assert rc == 0, f"test-llama failed:\n{out}\n{err}"
    lines = out.strip().splitlines()
    assert lines[-1] == "overall okay: 1"
    steps = [m for m in map(STEP_LINE.fullmatch, lines) if m]
    assert [int(m.group(1)) for m in steps] == list(range(STEPS))
    printed = np.array([float(m.group(2)) for m in steps])
    np.testing.assert_allclose(printed, read_state(state)[-1], rtol=0, atol=2e-6)  # 6 printed decimals
    checked = {line.split()[0] for line in lines if "max abs diff" in line and line.endswith(" OK")}
    assert {"logits", "loss"} <= checked
    assert {"d" + p for p in ("tok_emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "rms_att", "rms_ffn",
                              "rms_final")} <= checked


@pytest.mark.parametrize("name", NAMES)
def test_test_llama_passes_on_fixture(capsys, name):
    model, state = paths(name)
    rc, out, err = run_test_llama(capsys, model, state)
    check_passing_run(rc, out, err, state)
    if not FIXTURE_CONFIGS[name][7]:
        assert re.search(r"^dwcls +max abs diff .* OK$", out, re.MULTILINE), \
            "an untied classifier's gradient is checked"


def test_test_llama_passes_with_plain_layers(capsys):
    model, state = paths("gqa6over2_v67")
    check_passing_run(*run_test_llama(capsys, model, state, "--plain"), state)


def _grad_offset(name, pname):
    """Byte offset in NAME_state.bin of the largest-magnitude gradient of parameter pname."""
    *_, V, _, _, B, T, _ = FIXTURE_CONFIGS[name]
    grads_at = HEADER_BYTES + 4 * (2 * B * T + B * T * V + 1)
    sizes = param_sizes(name)
    start = sum(sizes[p] for p in itertools.takewhile(lambda p: p != pname, sizes))  # the tensors before pname
    grads = read_state(paths(name)[1])[5]
    return grads_at + 4 * (start + int(np.argmax(np.abs(grads[start:start + sizes[pname]]))))


def _patch_f32(src, dst, offset, fn):
    raw = bytearray(src.read_bytes())
    value = np.frombuffer(bytes(raw[offset:offset + 4]), "<f4")[0]
    raw[offset:offset + 4] = np.array([fn(value)], "<f4").tobytes()
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("pname", ["wk", "rms_ffn", "wcls"])
def test_test_llama_fails_on_a_flipped_gradient(capsys, tmp_path, pname):
    name = "mqa_untied_v91"
    model, state = paths(name)
    bad = _patch_f32(state, tmp_path / "flipped_state.bin", _grad_offset(name, pname), lambda v: -v)
    rc, out, _ = run_test_llama(capsys, model, bad)
    assert rc == 1 and out.strip().splitlines()[-1] == "overall okay: 0"
    not_ok = [line.split()[0] for line in out.splitlines() if line.endswith("NOT OK")]
    assert not_ok == ["d" + pname], out


def test_test_llama_fails_on_a_wrong_step_loss(capsys, tmp_path):
    name = "gqa6over2_v67"
    model, state = paths(name)
    size = state.stat().st_size
    bad = _patch_f32(state, tmp_path / "wrong_loss_state.bin", size - 4 * (STEPS - 6), lambda v: v + 1e-3)
    rc, out, _ = run_test_llama(capsys, model, bad)
    assert rc == 1 and out.strip().splitlines()[-1] == "overall okay: 0"
    assert [line.split(":")[0] for line in out.splitlines() if line.endswith("NOT OK")] == ["step 6"], out


# ------------------------------------------------------------------------------------------------------------
# (c) files that cannot be checked: one line naming the file, exit 2

BAD_STATES = {  # -> (patched_copy keywords (offset: 4 * the header int), words the message must hold)
    "truncated": ({"truncate": -4}, "truncated"),
    "header_only": ({"truncate": 600}, "shorter than the 1024-byte header"),
    "wrong_magic": ({"offset": 0, "value": 20240327}, None),  # llm.c's GPT-2 debug state magic: named as such
    "foreign_magic": ({"offset": 0, "value": 12345}, "magic 12345"),
    "wrong_version": ({"offset": 4 * 1, "value": 2}, "version 2"),
    "other_n_heads": ({"offset": 4 * 8, "value": 3}, "n_heads 3 (model 6)"),
    "other_vocab": ({"offset": 4 * 4, "value": 68}, "vocab_size 68 (model 67)"),
    "untied": ({"offset": 4 * 11, "value": 0}, "shared_classifier 0 (model 1)"),
    "T_past_seq_len": ({"offset": 4 * 3, "value": 17}, "T=17"),
    "trailing_bytes": ({"append": b"\0" * 4}, "longer than its header says"),
}


@pytest.mark.parametrize("kind", BAD_STATES)
def test_test_llama_rejects_bad_state(capsys, tmp_path, kind):
    model, state = paths("gqa6over2_v67")
    patch, words = BAD_STATES[kind]
    bad = patched_copy(state, tmp_path / f"bad_{kind}_state.bin", **patch)
    rc, out, err = run_test_llama(capsys, model, bad)
    assert rc == 2 and bad.name in err and "overall okay" not in out, out + err
    assert words is None or words in err, err


def test_test_llama_rejects_state_of_another_model(capsys):
    model, _ = paths("gqa6over2_v67")
    _, other = paths("mqa_untied_v91")
    rc, _out, err = run_test_llama(capsys, model, other)
    assert rc == 2 and other.name in err and "another model" in err


def test_test_llama_rejects_bad_model_files(capsys, tmp_path):
    from llmpy.formats.llama2c import read_llama2c, write_llama2c

    model, state = paths("gqa6over2_v67")
    config, weights, _, _ = read_llama2c(model)
    v2 = write_llama2c(tmp_path / "int8_model.bin", config, weights, 2, group_size=8)
    truncated = patched_copy(model, tmp_path / "truncated_model.bin", truncate=-8)
    for bad in (v2, truncated, tmp_path / "missing_model.bin", state):
        rc, out, err = run_test_llama(capsys, bad, state)
        assert rc == 2 and bad.name in err and "overall okay" not in out, out + err


# ------------------------------------------------------------------------------------------------------------
# (d) live: regenerate with torch

def test_test_llama_passes_on_live_fixtures(capsys, tmp_path):
    make = import_reference("make_llama_fixtures")
    written = make.make_fixtures(tmp_path)
    assert sorted(written) == sorted(NAMES)
    for name in NAMES:
        model, state = paths(name, base=tmp_path)
        check_passing_run(*run_test_llama(capsys, model, state), state)
        # the same seeds give the committed files (up to float64 summation order in another torch build)
        fresh, committed = read_state(state), read_state(paths(name)[1])
        for a, b in zip(fresh[1:], committed[1:]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
