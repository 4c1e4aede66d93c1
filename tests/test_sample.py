"""`llmpy sample`: seeded, batched generation from checkpoints and run directories."""

import numpy as np
import pytest

from llmpy.cli import main
from llmpy.formats.llmc import save_checkpoint
from llmpy.gpt2.generate import generate
from llmpy.gpt2.model import GPT2Config, init_params
from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer

CFG = GPT2Config(max_seq_len=64, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=2, channels=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "model.bin"
    params = init_params(CFG, np.random.default_rng(0)) * 4.0
    save_checkpoint(path, CFG, params)
    return path, params


def _samples(capsys, *argv):
    assert main(["sample", *map(str, argv)]) == 0
    out = capsys.readouterr().out
    return out.split("---\n")[1:-1]


def test_greedy_sample_equals_generate(checkpoint, capsys):
    path, params = checkpoint
    tok = get_gpt2_tokenizer()
    prompt = "Hello there"
    got = _samples(capsys, path, "--prompt", prompt, "-n", 12, "--temperature", 0)
    ids = generate(CFG, params, [tok.eot_token] + tok.encode_ordinary(prompt), 12, temperature=0.0)
    assert got == [prompt + tok.decode(ids[1 + len(tok.encode_ordinary(prompt)):]) + "\n"]


def test_seeded_samples(checkpoint, capsys):
    path, _ = checkpoint
    a = _samples(capsys, path, "-n", 8, "--seed", 5, "--top-k", 50, "--num-samples", 3)
    b = _samples(capsys, path, "-n", 8, "--seed", 5, "--top-k", 50, "--num-samples", 3)
    c = _samples(capsys, path, "-n", 8, "--seed", 6, "--top-p", 0.9, "--num-samples", 3)
    assert len(a) == 3 and a == b and a != c and len(set(a)) > 1


def test_bad_model_and_flags(tmp_path, checkpoint, capsys):
    assert main(["sample", str(tmp_path / "missing.bin")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["sample", str(tmp_path / "run")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert main(["sample", str(checkpoint[0]), "--top-p", "0"]) == 2
    assert main(["sample", str(checkpoint[0]), "-n", "100"]) == 2
    assert "max_seq_len 64" in capsys.readouterr().err
