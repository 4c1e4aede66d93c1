"""`llmpy export --to tokenizer` and the tokenizer.bin written beside a Hugging Face export: llama2.c's
tokenizer.py, checked against llama2.c's own file for Llama 2 and against sentencepiece's encoding."""

import random
from pathlib import Path

import pytest

spm = pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

from test_hf_llama import make_checkpoint
from test_prepro_llama import LLAMA2_BIN, LLAMA2_MODEL, LLAMA2C_TRAINER, needs_llama2, sentences

from llmpy.cli import main
from llmpy.tokenizers.llama2 import Llama2Tokenizer

VOCAB = 300


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    (d / "t.txt").write_text("\n".join(sentences(random.Random(2), 400)))
    spm.SentencePieceTrainer.train(input=str(d / "t.txt"), model_prefix=str(d / "t"), vocab_size=VOCAB,
                                   **LLAMA2C_TRAINER)
    return d / "t.model"


@needs_llama2
def test_llama2_tokenizer_model_exports_to_llama2cs_own_file(tmp_path, capsys):
    out = tmp_path / "tokenizer.bin"
    assert main(["export", str(LLAMA2_MODEL), str(out), "--to", "tokenizer"]) == 0
    assert out.read_bytes() == LLAMA2_BIN.read_bytes()
    assert "32000 pieces" in capsys.readouterr().out


def test_exported_tokenizer_encodes_like_sentencepiece(tmp_path, sp_model):
    out = tmp_path / "tok.bin"
    assert main(["export", str(sp_model), "-o", str(out), "--to", "tokenizer"]) == 0
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    llama = Llama2Tokenizer.load(out, VOCAB)  # what llama2.c's run and `llmpy run -z` read
    for s in ["the cat sat on a mat", "Lily found 3 shiny stones, 12 red apples.\nShe was happy!",
              "naïve café ✓ 日本", "zebra quux: 🙂 ~^", ""]:
        ids = [1] + sp.encode(s)
        assert llama.encode(s, bos=True, eos=False) == ids
        assert llama.decode_all(ids[1:]).decode("utf-8") == s


def test_export_tokenizer_bad_input(tmp_path, capsys):
    (tmp_path / "junk.model").write_bytes(b"not a protobuf at all" * 10)
    assert main(["export", str(tmp_path / "junk.model"), str(tmp_path / "t.bin"), "--to", "tokenizer"]) == 2
    assert "not a sentencepiece model" in capsys.readouterr().err
    (tmp_path / "hfdir").mkdir()
    assert main(["export", str(tmp_path / "hfdir"), str(tmp_path / "t.bin"), "--to", "tokenizer"]) == 2
    assert "has no tokenizer.model" in capsys.readouterr().err
    assert not (tmp_path / "t.bin").exists()


def test_hf_export_writes_the_tokenizer_beside_the_model(tmp_path, sp_model, capsys):
    d = tmp_path / "hf"
    make_checkpoint(d, rms_norm_eps=1e-5, vocab_size=VOCAB)
    (d / "tokenizer.model").write_bytes(sp_model.read_bytes())
    out = tmp_path / "out" / "model.bin"
    out.parent.mkdir()
    assert main(["export", str(d), str(out), "--to", "v1"]) == 0
    assert "wrote " + str(out.with_name("tokenizer.bin")) in capsys.readouterr().out
    assert main(["export", str(sp_model), str(tmp_path / "ref.bin"), "--to", "tokenizer"]) == 0
    assert out.with_name("tokenizer.bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()
    # an existing tokenizer.bin is kept without --overwrite (and replaced with it)
    out.with_name("tokenizer.bin").write_bytes(b"mine")
    assert main(["export", str(d), str(tmp_path / "out" / "m2.bin"), "--to", "v0"]) == 0
    assert "kept the existing" in capsys.readouterr().out
    assert out.with_name("tokenizer.bin").read_bytes() == b"mine"
    assert main(["export", str(d), str(tmp_path / "out" / "m2.bin"), "--to", "v0", "--overwrite"]) == 0
    assert out.with_name("tokenizer.bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()
    # llmpy run finds it beside the model
    assert main(["run", str(out), "-n", "8", "-t", "0", "-i", "the cat"]) == 0


def test_hf_export_without_a_sentencepiece_model_says_so(tmp_path, sp_model, capsys):
    d = tmp_path / "hf"
    make_checkpoint(d, rms_norm_eps=1e-5, vocab_size=VOCAB + 20)
    assert main(["export", str(d), str(tmp_path / "a.bin"), "--to", "v0"]) == 0
    assert "has no tokenizer.model" in capsys.readouterr().out
    (d / "tokenizer.model").write_bytes(sp_model.read_bytes())  # 300 pieces for 320 tokens
    assert main(["export", str(d), str(tmp_path / "b.bin"), "--to", "v0"]) == 0
    assert "300 pieces and the model 320 tokens" in capsys.readouterr().out
    assert not Path(tmp_path / "tokenizer.bin").exists()
