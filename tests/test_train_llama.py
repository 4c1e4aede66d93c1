"""`llmpy train` with a Llama: the GPT-2 loop drives llmpy.llama.train_model through llmpy.train.family.

Checked against independent code: the checkpoints are llama2.c v0 files whose logits through `llmpy run`'s
inference Transformer (and Hugging Face transformers, via `llmpy export --to hf`) equal the training model's;
a fine-tune's first val loss equals the cross-entropy of the inference Transformer's logits; the sampler's
tokens are those of the training model's own logits; a resumed run equals an uninterrupted one to the bit.
Every bad input is an LlmpyError before any work."""

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from test_train_helpers import V, run_interrupted, tiny_config, write_corpus

from llmpy.errors import LlmpyError
from llmpy.formats.llama2c import read_llama2c, write_llama2c
from llmpy.formats.tokens import write_shard
from llmpy.llama.inference import Transformer
from llmpy.llama.train_model import Llama, init_params, make_config
from llmpy.train import checkpoint as ckpt
from llmpy.train.family import LlamaFamily, load_family
from llmpy.train.log import parse_log
from llmpy.train.loop import Trainer

LLAMA = "llama:d32l2h4kv2"   # grouped-query attention: 4 query heads share 2 key/value heads
STEPS = 9
# 2 micro-batches per step (grad accumulation), shuffled train data, the outlier detector on
COMMON = {"init": LLAMA, "max_steps": STEPS, "checkpoint_every": 3, "total_batch_size": 2 * 4 * 16,
          "val_every": 4, "skip_update_lossz": 6.0}


def run(cfg):
    return Trainer(cfg, stream=io.StringIO()).run()


def transformer_logits(path, tokens):
    """(T,V) float64 logits of `tokens` at positions 0..T-1 through `llmpy run`'s inference Transformer."""
    transformer = Transformer.from_file(path)
    return transformer.prefill(list(tokens), logits="all").astype(np.float64)


def cross_entropy(logits, targets):
    # logits (T,V) float64, targets (T,)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return lse - logits[np.arange(len(targets)), targets]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted 9-step Llama run (its summary, directory and config)."""
    tmp = tmp_path_factory.mktemp("llama")
    cfg = tiny_config(tmp, out="full", **COMMON)
    return run(cfg), tmp / "full"


def test_a_llama_run_checkpoints_llama2c_files_and_learns(trained):
    summary, out = trained
    assert ckpt.complete_steps(out) == [3, 6, 9]
    config, _, version, _ = read_llama2c(ckpt.model_path(out, STEPS))
    assert version == 0
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.vocab_size) == (32, 2, 4, 2, V)
    family, params = load_family(ckpt.model_path(out, STEPS))
    assert isinstance(family, LlamaFamily)
    np.testing.assert_array_equal(params, summary["params"])   # a v0 file holds the float32 params exactly
    losses = summary["train_losses"]
    assert losses[STEPS - 1] < losses[0] - 0.3
    assert summary["val_losses"][STEPS] < summary["val_losses"][0]


def test_ctrl_c_then_resume_is_bit_identical(trained, tmp_path):
    full, full_dir = trained
    cfg = tiny_config(tmp_path, out="split", **COMMON)
    first = run_interrupted(cfg, after_step=4)
    assert first["interrupted"] and ckpt.complete_steps(tmp_path / "split") == [3, 5]
    cfg.resume = True
    second = run(cfg)
    assert min(second["train_losses"]) == 5
    assert {**first["train_losses"], **second["train_losses"]} == full["train_losses"]   # exact floats
    assert second["val_losses"][STEPS] == full["val_losses"][STEPS]
    np.testing.assert_array_equal(second["params"], full["params"])
    assert second["sample"] == full["sample"]   # the sampler's RNG was restored too
    assert ckpt.model_path(tmp_path / "split", STEPS).read_bytes() == ckpt.model_path(full_dir, STEPS).read_bytes()
    assert parse_log(tmp_path / "split" / "main.log")["trl"] == parse_log(full_dir / "main.log")["trl"]


def test_checkpoint_through_llmpy_run_gives_the_training_models_logits(trained):
    _, out = trained
    path = ckpt.model_path(out, STEPS)
    family, params = load_family(path)
    tokens = np.random.default_rng(5).integers(0, V, size=(1, 32)).astype(np.int32)
    model = Llama(family.config, params.copy(), 1, 32)
    model.forward(tokens)
    expected = model.logits()[0].astype(np.float64)
    np.testing.assert_allclose(transformer_logits(path, tokens[0]), expected, rtol=1e-4, atol=2e-5)


def test_export_of_a_checkpoint_to_v1_and_hf(trained, tmp_path):
    from llmpy.cli import main as cli_main
    _, out = trained
    path = ckpt.model_path(out, STEPS)
    assert cli_main(["export", str(path), str(tmp_path / "m_v1.bin"), "--to", "v1"]) == 0
    _, w0, _, _ = read_llama2c(path)
    _, w1, version, _ = read_llama2c(tmp_path / "m_v1.bin")
    assert version == 1 and all(np.array_equal(w0[k], w1[k]) for k in w0)
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("transformers/torch are not installed")
    import torch
    from transformers import LlamaForCausalLM
    assert cli_main(["export", str(path), "-o", str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float64).eval()
    tokens = np.random.default_rng(6).integers(0, V, size=(2, 16)).astype(np.int32)
    family, params = load_family(path)
    model = Llama(family.config, params.copy(), 2, 16)
    model.forward(tokens)
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(model.logits(), ref, rtol=1e-4, atol=2e-5)


def test_sampling_follows_the_training_models_logits():
    from llmpy.sampler import random_f32, sample_topp, softmax
    config = make_config(32, 2, 4, V, 32, n_kv_heads=2)
    params = init_params(config, np.random.default_rng(3))
    family = LlamaFamily(config)
    state = [1337]

    def coin():
        c, state[0] = random_f32(state[0])
        return c
    got = family.sample(params, 12, 1.0, 0, 0.9, coin)
    # the reference: the training model's full forward over the sequence so far, llama2.c's top-p sampler
    state, seq = [1337], [1]
    model = Llama(config, params.copy())
    for _ in range(12):
        model.forward(np.asarray([seq], dtype=np.int32))
        probs = softmax(model.logits()[0, -1].copy())
        seq.append(sample_topp(probs, 0.9, coin()))
    assert got == seq[1:]


def test_threads_do_not_change_a_llama_run(tmp_path):
    a = run(tiny_config(tmp_path, out="t1", init=LLAMA, max_steps=3, threads=1))
    b = run(tiny_config(tmp_path, out="t2", init=LLAMA, max_steps=3, threads=2))
    assert a["train_losses"] == b["train_losses"]
    np.testing.assert_array_equal(a["params"], b["params"])


def test_fine_tuning_a_llama2c_file_starts_from_its_weights(tmp_path):
    """-e FILE (v1): the first val loss is the cross-entropy of the inference Transformer's logits."""
    config = make_config(32, 2, 4, V, 32, n_kv_heads=1, shared_classifier=False)
    family = LlamaFamily(config)
    params = init_params(config, np.random.default_rng(7))
    write_llama2c(tmp_path / "init.bin", config, family.weights(params), 1)
    cfg = tiny_config(tmp_path, init=str(tmp_path / "init.bin"), max_steps=2, val_max_steps=2, gen_tokens=0)
    text = io.StringIO()
    summary = Trainer(cfg, stream=text).run()
    assert f"Llama checkpoint {tmp_path / 'init.bin'}" in text.getvalue()
    val = np.fromfile(cfg.val_data, dtype=np.uint16)[512:]   # the 1024-byte header, then the tokens
    losses = []
    for b in range(2 * cfg.batch_size):   # the val loader's first 2 batches: rows of T+1 tokens in order
        row = val[b * cfg.seq_len: (b + 1) * cfg.seq_len + 1].astype(np.int64)
        losses.append(cross_entropy(transformer_logits(tmp_path / "init.bin", row[:-1]), row[1:]))
    assert summary["val_losses"][0] == pytest.approx(np.mean(losses), rel=1e-5)


# ----------------------------------------------------------------------------
# bad input: an LlmpyError naming the fix, before any work (no output directory left behind)

def refused(cfg, *needles):
    with pytest.raises(LlmpyError) as e:
        Trainer(cfg, stream=io.StringIO())
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    assert not Path(cfg.output_dir).exists()
    return str(e.value)


@pytest.mark.parametrize("init, needles", [
    ("llama:d32l2h4kv3", ("not a multiple of n_kv_heads=3", "1, 2, 4")),
    ("llama:d30l2h4", ("dim=30 is not divisible by n_heads=4",)),
    ("llama:d12l2h4", ("head size dim/n_heads = 3 is odd",)),
    ("llama:d32l2", ("llama:d<dim>l<layers>h<heads>[kv<kv_heads>]",)),
    ("llama:d32l2h4kv0", ("must be >= 1",)),
])
def test_llama_shapes_that_cannot_work(tmp_path, init, needles):
    refused(tiny_config(tmp_path, init=init), *needles)


def test_sequence_longer_than_the_models_context(tmp_path):
    refused(tiny_config(tmp_path, init=LLAMA, max_seq_len=16, seq_len=32), "exceeds the model's max_seq_len 16",
            "-t 16")


def test_token_ids_beyond_the_vocabulary(tmp_path):
    refused(tiny_config(tmp_path, init=LLAMA, vocab_size=32), "holds token id 63", "vocabulary has 32 tokens")


def test_int8_v2_file_as_init(tmp_path):
    config = make_config(32, 2, 4, V, 32)
    weights = LlamaFamily(config).weights(init_params(config, np.random.default_rng(0)))
    write_llama2c(tmp_path / "q.bin", config, weights, 2, group_size=32)
    refused(tiny_config(tmp_path, init=str(tmp_path / "q.bin")), "v2 file (int8 weights)", "--to v0")


def test_data_of_a_bigger_tokenizer_than_the_llama_file(tmp_path):
    """Data whose prepro record names a 64-token vocabulary, with ids that happen to fit a 40-token model."""
    config = make_config(32, 2, 4, 40, 32)
    weights = LlamaFamily(config).weights(init_params(config, np.random.default_rng(0)))
    write_llama2c(tmp_path / "m.bin", config, weights, 0)
    data = tmp_path / "data"
    data.mkdir()
    tokens = np.random.default_rng(0).integers(0, 40, size=3000)
    n = write_shard(data / "x_train.bin", tokens, vocab_size=V)
    write_shard(data / "x_val.bin", tokens[:600], vocab_size=V)
    (data / "prepro.json").write_text(json.dumps({"train": "x_train.bin", "val": "x_val.bin", "tokenizer":
                                                  "sentencepiece", "vocab_size": V,
                                                  "files": {"x_train.bin": n, "x_val.bin": 600}}))
    cfg = tiny_config(tmp_path, init=str(tmp_path / "m.bin"), train_data=str(data / "x_train.bin"),
                      val_data=str(data / "x_val.bin"))
    refused(cfg, f"vocabulary of {V} tokens", "the model has 40", "--vocab-size 40")


def test_hellaswag_and_bfloat16_checkpoints_need_gpt2(tmp_path):
    refused(tiny_config(tmp_path, init=LLAMA, hellaswag=True), "GPT-2's vocabulary", "drop -h 1")
    refused(tiny_config(tmp_path, init=LLAMA, save_dtype="bfloat16"), "float32 only", "--save-dtype bfloat16")


def test_llama_from_scratch_takes_the_datas_vocabulary(tmp_path):
    """A prepro record beside the shards (vocab 64) wins over --vocab-size."""
    train, val = write_corpus(tmp_path)
    names = {Path(train).name: int(np.fromfile(train, dtype=np.int32, count=3)[2]),
             Path(val).name: int(np.fromfile(val, dtype=np.int32, count=3)[2])}
    (tmp_path / "prepro.json").write_text(json.dumps({"train": Path(train).name, "val": Path(val).name,
                                                      "tokenizer": "sentencepiece", "vocab_size": V, "files": names}))
    trainer = Trainer(tiny_config(tmp_path, init=LLAMA, vocab_size=50257, max_steps=2), stream=io.StringIO())
    trainer.release()
    assert trainer.family.vocab_size == V


def test_command_line_flags_and_aliases():
    import argparse

    from llmpy.cli.train import add_arguments, config_from_args
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["-e", LLAMA, "--max-tokens", "7", "--output", "runs/x", "--top-p", "0.8",
                                              "--shuffle", "llmc", "--threads", "1", "-i", "d/*.bin"]))
    assert (cfg.init, cfg.gen_tokens, cfg.output_dir, cfg.top_p, cfg.shuffle, cfg.threads) == \
        (LLAMA, 7, "runs/x", 0.8, "llmc", 1)
    with pytest.raises(LlmpyError, match="--top-p must be in"):
        config_from_args(parser.parse_args(["--top-p", "1.5", "-i", "d/*.bin"])).check()


def test_shuffle_llmc_reaches_the_train_loader_only(tmp_path):
    from llmpy.data.dataloader import SHUFFLE_MODES
    trainer = Trainer(tiny_config(tmp_path, shuffle="llmc"), stream=io.StringIO())
    trainer.release()
    assert trainer.train_loader.shuffle == SHUFFLE_MODES["llmc"] and trainer.train_loader.seed == 42
    assert trainer.val_loader.shuffle == SHUFFLE_MODES[False]


def test_a_nan_gradient_skips_the_update_of_a_llama(tmp_path, monkeypatch):
    from llmpy.train import loop
    real = loop.accumulate_gradients
    calls = {"n": 0}

    def poisoned(model, loader, grad_accum, batches=None):
        loss = real(model, loader, grad_accum, batches)
        calls["n"] += 1
        if calls["n"] == 3:
            model.grads[11] = np.nan
        return loss
    monkeypatch.setattr(loop, "accumulate_gradients", poisoned)
    text = io.StringIO()
    trainer = Trainer(tiny_config(tmp_path, init=LLAMA, max_steps=5, progress="lines"), stream=text)
    real_step, before = trainer.train_step, {}

    def step(s):
        before[s] = trainer.model.params.copy()
        return real_step(s)
    trainer.train_step = step
    summary = trainer.run()
    assert text.getvalue().count("skipped the update") == 1
    np.testing.assert_array_equal(before[3], before[2])   # step 2's update (the third) was skipped
    assert not np.array_equal(before[2], before[1]) and not np.array_equal(before[4], before[3])
    assert np.isfinite(summary["params"]).all()


def test_gpt2_data_for_a_llama(tmp_path):
    """Shards prepro recorded as GPT-2's (llmpy.data.vocab): a Llama needs sentencepiece data."""
    train, val = write_corpus(tmp_path)
    names = {Path(f).name: int(np.fromfile(f, dtype=np.int32, count=3)[2]) for f in (train, val)}
    (tmp_path / "prepro.json").write_text(json.dumps({"train": Path(train).name, "val": Path(val).name,
                                                      "tokenizer": "gpt2", "files": names}))
    refused(tiny_config(tmp_path, init="llama:d16l1h2"), "holds GPT-2 tokens", "--vocab-size")
