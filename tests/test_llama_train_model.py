"""The trainable Llama (llmpy.llama.train_model) against an independent PyTorch Llama (tests/reference/
llama_train_torch.py, llama2.c's model.py semantics): logits, loss and every parameter's gradient in float64
and float32 for deliberately odd configs; AdamW steps against torch.optim.AdamW; a llama2.c v0 file written
from the parameters and read by the inference Transformer; llama2.c's init and hidden-size rule."""

import math

import numpy as np
import pytest
from conftest import import_reference

from llmpy.formats.llama2c import read_llama2c, write_llama2c
from llmpy.gpt2.model import NamedViews
from llmpy.llama.inference import Transformer
from llmpy.llama.train_model import (
    Llama,
    hidden_dim_for,
    init_params,
    make_config,
    matrix_param_ranges,
    num_parameters,
    param_shapes,
    params_from_weights,
)
from llmpy.optim import AdamW

B, T = 2, 11  # T < max_seq_len: the rope tables and activations must only use positions 0..T-1

CONFIGS = {
    # 6 query heads over 2 kv heads, untied classifier, vocab not a multiple of 64, rope theta and eps not the defaults
    "gqa_untied": make_config(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=67, max_seq_len=16,
                              hidden_dim=40, rope_theta=500.0, norm_eps=1e-6, shared_classifier=False),
    # multi-query: 4 heads over 1 kv head, tied classifier, hidden_dim from llama2.c's rule
    "mqa_tied": make_config(dim=32, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=53, max_seq_len=13),
    # head size 48 (stories15M's), 2 heads over 1
    "hs48": make_config(dim=96, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=45, max_seq_len=12, hidden_dim=64,
                        shared_classifier=False),
    # plain multi-head, three layers
    "mha": make_config(dim=24, n_layers=3, n_heads=3, vocab_size=37, max_seq_len=16, hidden_dim=36),
}


def _params(config, seed, dtype):
    """llama2.c's init, then spread: linears x8 so attention is far from uniform, norms 1 + N(0, 0.2)
    so the norm weights' gradients are not all alike."""
    rng = np.random.default_rng(seed)
    params = init_params(config, rng, dtype)
    for name, view in NamedViews(params, param_shapes(config)).items():
        if name.startswith("rms"):
            view += rng.normal(0.0, 0.2, view.shape).astype(dtype)
        else:
            view *= 8.0
    return params


def _batch(config, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=(B, T + 1)).astype(np.int32)
    tokens[0, 0] = config.vocab_size - 1
    return tokens[:, :-1].copy(), tokens[:, 1:].copy()


def _torch_reference(config, params, inputs, targets):
    """(logits, loss, {name: grad}) from the PyTorch reference in float64."""
    ref = import_reference("llama_train_torch")  # skips the test without torch
    import torch

    views = NamedViews(params.astype(np.float64), param_shapes(config))
    w = {name: torch.tensor(v, requires_grad=True) for name, v in views.items()}
    logits, loss = ref.forward(config, w, inputs, targets)
    loss.backward()
    return logits.detach().numpy(), loss.item(), {name: t.grad.numpy() for name, t in w.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_loss_and_gradients_match_torch(name, dtype):
    config = CONFIGS[name]
    params = _params(config, 0, dtype)
    inputs, targets = _batch(config, 1)
    model = Llama(config, params, fused=False if dtype == np.float64 else None)
    loss = model.forward(inputs, targets)
    logits = model.logits().copy()  # the fused backward turns the logits into their gradient
    model.zero_grad()
    model.backward()
    want_logits, want_loss, want_grads = _torch_reference(config, params, inputs, targets)

    assert np.abs(want_logits).max() > 1.0 and want_loss > 1.0  # not a comparison of near-zero numbers
    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert logits.dtype == dtype and model.grads.dtype == dtype and model.acts["losses"].dtype == dtype
    assert logits.shape == (B, T, config.vocab_size)
    np.testing.assert_allclose(logits, want_logits, rtol=0, atol=tol * np.abs(want_logits).max())
    assert loss == pytest.approx(want_loss, rel=tol)
    for pname, grad in model.g.items():
        want = want_grads[pname]
        scale = np.abs(want).max()
        assert scale > 0, f"{pname}: the reference gradient is all zero"
        np.testing.assert_allclose(grad, want, rtol=0, atol=(tol if dtype == np.float64 else 1e-4) * scale,
                                   err_msg=f"{name}: d{pname}")


def test_fused_and_plain_paths_agree_and_gradients_accumulate():
    config = CONFIGS["gqa_untied"]
    params = _params(config, 2, np.float32)
    inputs, targets = _batch(config, 3)
    plain, fused = Llama(config, params, fused=False), Llama(config, params, fused=True)
    assert plain.forward(inputs, targets) == pytest.approx(fused.forward(inputs, targets), rel=1e-6)
    plain.zero_grad()
    plain.backward()
    fused.zero_grad()
    fused.backward()
    np.testing.assert_allclose(fused.grads, plain.grads, rtol=0, atol=1e-5 * np.abs(plain.grads).max())
    # two micro-batches at loss_scale 1/2 each add up to one batch at scale 1
    half = Llama(config, params, fused=False)
    half.zero_grad()
    for _ in range(2):
        half.forward(inputs, targets)
        half.backward(loss_scale=0.5)
    np.testing.assert_allclose(half.grads, plain.grads, rtol=0, atol=1e-6 * np.abs(plain.grads).max())
    with pytest.raises(RuntimeError, match="forward"):
        half.backward()  # the logits were consumed


def test_adamw_steps_match_torch():
    """Five steps of llmpy.optim.AdamW on the flat buffers give the losses of torch.optim.AdamW on the tensors."""
    ref = import_reference("llama_train_torch")  # skips the test without torch
    import torch

    config = CONFIGS["mqa_tied"]
    params = _params(config, 4, np.float32)
    inputs, targets = _batch(config, 5)
    lr, wd = 3e-3, 0.1
    model = Llama(config, params.copy())
    opt = AdamW(num_parameters(config), lr=lr, weight_decay=wd)
    views = NamedViews(params, param_shapes(config))
    w = {name: torch.tensor(v.copy(), requires_grad=True) for name, v in views.items()}
    topt = torch.optim.AdamW(list(w.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    ours, theirs = [], []
    for _ in range(5):
        ours.append(model.forward(inputs, targets))
        model.zero_grad()
        model.backward()
        opt.step(model.params, model.grads)
        topt.zero_grad()
        _, loss = ref.forward(config, w, inputs, targets)
        loss.backward()
        topt.step()
        theirs.append(loss.item())
    assert ours[-1] < ours[0] - 0.1  # it trains
    np.testing.assert_allclose(ours, theirs, rtol=2e-5)
    for name, view in model.p.items():
        np.testing.assert_allclose(view, w[name].detach().numpy(), rtol=0, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("shared", [True, False])
def test_llama2c_file_gives_the_inference_transformer_the_same_logits(tmp_path, shared):
    """Parameters written as a llama2.c v0 file (a write of the views) and read by llmpy.llama.inference give
    the training model's logits (rope theta and eps at run.c's values, which the file cannot carry)."""
    config = make_config(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=67, max_seq_len=16,
                         shared_classifier=shared)
    model = Llama(config, _params(config, 6, np.float32))
    inputs, targets = _batch(config, 7)
    opt = AdamW(num_parameters(config), lr=1e-2)
    for _ in range(3):  # a trained model: the views written are the ones the optimizer updated in place
        model.forward(inputs, targets)
        model.zero_grad()
        model.backward()
        opt.step(model.params, model.grads)
    model.forward(inputs)
    path = write_llama2c(tmp_path / "model.bin", config, model.weights(), 0)
    t = Transformer.from_file(path)
    last = t.prefill(inputs[0])[0]
    assert np.abs(last).max() > 1.0
    np.testing.assert_allclose(last, model.logits()[0, -1], rtol=0, atol=1e-5 * np.abs(last).max())
    every = Transformer.from_file(path).prefill(inputs[1], logits="all")
    np.testing.assert_allclose(every, model.logits()[1], rtol=0, atol=1e-5 * np.abs(every).max())
    # and back: the file's weights into a flat buffer give the same parameters and config
    read_config, weights, _, _ = read_llama2c(path)
    assert read_config == config
    np.testing.assert_array_equal(params_from_weights(read_config, weights), model.params)


def test_init_follows_llama2c_intent():
    config = make_config(dim=64, n_layers=4, n_heads=4, vocab_size=300, max_seq_len=8)
    params = init_params(config, np.random.default_rng(8))
    assert params.dtype == np.float32 and params.size == num_parameters(config)
    p = NamedViews(params, param_shapes(config))
    residual_std = 0.02 / math.sqrt(2 * config.n_layers)
    for name, view in p.items():
        if name.startswith("rms"):
            np.testing.assert_array_equal(view, 1.0, err_msg=name)
        else:
            want = residual_std if name in ("wo", "w2") else 0.02  # w3 at 0.02: llama2.c issue #579
            assert abs(view.mean()) < 0.1 * want, name
            assert view.std() == pytest.approx(want, rel=0.05), name
    again = init_params(config, np.random.default_rng(8))
    np.testing.assert_array_equal(again, params)  # the randomness is the generator passed in


def test_parameter_table_matches_llama2c_order_and_sizes():
    config = CONFIGS["gqa_untied"]
    names = list(param_shapes(config))
    assert names == ["tok_emb", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final", "wcls"]
    assert "wcls" not in param_shapes(CONFIGS["mqa_tied"])
    C, H, L, V, KV = 48, 40, 2, 67, 16
    assert num_parameters(config) == 2 * V * C + L * (2 * C + 2 * C * C + 2 * KV * C + 3 * C * H) + C
    # weight decay ranges: every 2-D weight, none of the norms
    decayed = np.zeros(num_parameters(config), bool)
    for start, stop in matrix_param_ranges(config):
        decayed[start:stop] = True
    views = NamedViews(np.arange(num_parameters(config)), param_shapes(config))
    for name, view in views.items():
        assert decayed[view.reshape(-1)].all() != name.startswith("rms"), name


def test_hidden_dim_rule_gives_the_stories_models():
    # llama2.c's stories15M, 42M, 110M: dim 288, 512, 768 with hidden_dim 768, 1376, 2048 (multiple_of 32)
    assert [hidden_dim_for(d) for d in (288, 512, 768)] == [768, 1376, 2048]
    assert hidden_dim_for(4096, 256) == 11008  # Llama 2 7B
    assert make_config(dim=288, n_layers=6, n_heads=6, vocab_size=32000, max_seq_len=256).hidden_dim == 768


def test_bad_input_is_refused():
    config = CONFIGS["mqa_tied"]
    model = Llama(config, _params(config, 9, np.float32))
    inputs, targets = _batch(config, 10)
    with pytest.raises(ValueError, match="outside"):
        model.forward(inputs, np.where(targets == 0, config.vocab_size, targets).astype(np.int32))
    with pytest.raises(ValueError, match="int32"):
        model.forward(inputs.astype(np.int64), targets)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.forward(np.zeros((1, config.seq_len + 1), np.int32))
    with pytest.raises(ValueError, match="flat array"):
        Llama(config, np.zeros(num_parameters(config) + 1, np.float32))
    with pytest.raises(ValueError, match="rope_theta"):
        make_config(dim=32, n_layers=1, n_heads=4, vocab_size=10, max_seq_len=8, rope_theta=0.0)


@pytest.mark.parametrize(("sizes", "fix"), [
    ({"dim": 48, "n_heads": 6, "n_kv_heads": 4}, "choose n_kv_heads among the divisors of 6: 1, 2, 3, 6"),
    ({"dim": 50, "n_heads": 6}, "choose a dim that is a multiple of 6 (e.g. 48)"),
    ({"dim": 54, "n_heads": 6}, "head size dim/n_heads = 9 is odd, and RoPE turns pairs"),
])
def test_heads_that_do_not_divide_name_the_fix(sizes, fix):
    from llmpy.errors import LlmpyError

    with pytest.raises(LlmpyError) as e:
        make_config(n_layers=1, vocab_size=10, max_seq_len=8, **sizes)
    assert fix in str(e.value)
    config = make_config(dim=48, n_layers=1, n_heads=6, n_kv_heads=2, vocab_size=10, max_seq_len=8)
    config.n_kv_heads = sizes.get("n_kv_heads", 2)
    config.dim = sizes["dim"]
    with pytest.raises(LlmpyError, match="Llama config"):
        Llama(config, np.zeros(1, np.float32))


@pytest.mark.parametrize("n_kv_heads", [6, 2])
def test_fused_training_step_allocates_no_large_arrays(n_kv_heads):
    """Activations are preallocated: a fused forward + backward makes no NumPy temporary of even a quarter
    of one (B,T,C) activation (tracemalloc sees NumPy's allocations)."""
    import tracemalloc

    pytest.importorskip("numba")
    config = make_config(dim=96, n_layers=2, n_heads=6, n_kv_heads=n_kv_heads, vocab_size=301, max_seq_len=64)
    model = Llama(config, init_params(config, np.random.default_rng(11)), fused=True)
    tokens = np.random.default_rng(12).integers(0, config.vocab_size, (4, 64)).astype(np.int32)
    model.forward(tokens, tokens)  # the first step allocates the activations and gradients
    model.zero_grad()
    model.backward()
    tracemalloc.start()
    try:
        model.forward(tokens, tokens)
        model.backward()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 64 * 96 * 4 // 4, f"a step allocated {peak} bytes"


@pytest.mark.parametrize("name", ["gqa_untied", "mqa_tied"])
def test_bench_torch_llama_runs_the_same_model(name):
    """`llmpy bench train --arch llama` compares with llmpy/bench/torch_llama.py: the same loss on the same batch
    (its own SDPA attention, real-valued RoPE and repeat_kv, independent of tests/reference)."""
    torch = pytest.importorskip("torch")
    from llmpy.bench.torch_llama import torch_step_time

    config = CONFIGS[name]
    params = _params(config, 17, np.float32)
    inputs, targets = _batch(config, 18)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, first_loss = torch_step_time(config, params.copy(), inputs, targets, 1, 5e-4, (0.9, 0.95), 0.1)
    finally:
        torch.set_num_threads(threads)
    assert abs(first_loss - Llama(config, params).forward(inputs, targets)) < 1e-5


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_bench_gemm_program_does_the_step_flops(monkeypatch, n_kv_heads):
    """`llmpy bench train --arch llama` times "the step's matmuls alone": its GEMMs must add up to the step's
    FLOPs (2*M*N*K each), which are counted here from the shapes each product is called with."""
    import argparse

    from llmpy.bench import train as bench_train

    args = argparse.Namespace(batch_size=2, seq_len=6, dim=16, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                              hidden_dim=24, vocab_size=37)
    bench = bench_train.LlamaBench(args)
    program = bench.gemms(np.random.default_rng(0))
    counted = []

    def matmul(a, b, out):
        counted.append(2 * math.prod(out.shape) * a.shape[-1])
        return np.matmul(a, b, out=out)

    def matmul_acc(c, a, b, accumulate=True):
        counted.append(2 * math.prod(c.shape) * a.shape[-1])

    monkeypatch.setattr(bench_train, "np", argparse.Namespace(matmul=matmul))
    monkeypatch.setattr(bench_train, "matmul_acc", matmul_acc)
    program.run()
    assert sum(counted) == bench.flops()
