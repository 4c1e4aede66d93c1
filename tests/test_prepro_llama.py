"""Data as llama2.c prepares it: sentencepiece vocabularies trained as its train_vocab, Llama 2's tokenizer
(downloaded and sha256-checked), BOS before every document, the tokenizer recorded for the trainer.

References: the sentencepiece library itself (trained and run here directly with llama2.c's settings),
llama2.c's shipped tokenizer.bin, and the texts the shards were made from."""

import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import write_stories_archive

spm = pytest.importorskip("sentencepiece")

from llmpy.cli import main
from llmpy.data import prepro, tinystories, vocab
from llmpy.errors import LlmpyError
from llmpy.formats.tokenizer_file import read_tokenizer
from llmpy.formats.tokens import read_shard, write_shard
from llmpy.tokenizers.llama2 import Llama2Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LLAMA2_MODEL = SHARED / "llama2" / "tokenizer.model"
LLAMA2_BIN = SHARED / "llama2" / "tokenizer.bin"
needs_llama2 = pytest.mark.skipif(not LLAMA2_MODEL.exists() or not LLAMA2_BIN.exists(),
                                  reason="../shared/data/llama2 is absent")
TEXT = ("the cat sat on a mat and then it ran far away into the green forest where birds sing; "
        "Lily found 3 shiny stones, 12 red apples and 7 blue cups. She was happy! \"Look,\" said Tom.")
WORDS = TEXT.split()
# llama2.c's tinystories.py train_vocab, the arguments it passes to sentencepiece
LLAMA2C_TRAINER = {"model_type": "bpe", "self_test_sample_size": 0, "input_format": "text",
                   "character_coverage": 1.0, "split_digits": True, "allow_whitespace_only_pieces": True,
                   "byte_fallback": True, "unk_surface": r" \342\201\207 ", "normalization_rule_name": "identity",
                   "minloglevel": 2}


def sentences(rng, n, words=8):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, words))) for _ in range(n)]


def documents_of(tokens, bos):
    """The documents of a token stream in which every document starts with bos (asserted)."""
    assert tokens[0] == bos
    return np.split(tokens, np.flatnonzero(tokens == bos))[1:]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three text files (three documents) and the output of `llmpy prepro text --vocab-size 300` on them."""
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    files = []
    for i in range(3):
        f = d / f"doc{i}.txt"
        f.write_text("\n".join(sentences(rng, 60)) + "\nnaïve café ✓ 日本\n\n" + "\n".join(sentences(rng, 40)) + "\n")
        files.append(f)
    out = d / "out"
    rc = main(["prepro", "text", *map(str, files), "--vocab-size", "300", "--out-dir", str(out), "--quiet"])
    assert rc == 0
    return files, out


def test_text_vocab_shards_start_documents_with_bos(corpus):
    files, out = corpus
    sp = spm.SentencePieceProcessor(model_file=str(out / "tok300.model"))
    assert sp.vocab_size() == 300 and sp.bos_id() == 1
    tokens = np.concatenate([read_shard(out / "text_val.bin"), read_shard(out / "text_train.bin")])
    assert tokens.dtype == np.uint16
    docs = documents_of(tokens, sp.bos_id())
    texts = [f.read_text(encoding="utf-8") for f in files]
    assert len(docs) == len(files)  # a document is a file; no BOS inside one
    for doc, text in zip(docs, texts):
        assert doc.tolist() == [1] + sp.encode(text)  # sentencepiece's own encode, with llama2.c's bos=True
        assert sp.decode(doc.tolist()) == text  # identity normalization: the text comes back whole
    # llama2.c's settings: every byte has a token <0xXX> (byte fallback), digits are split one by one
    assert [sp.id_to_piece(i) for i in (3, 3 + 0x0A, 258)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert [sp.id_to_piece(i) for i in sp.encode("3127")[-4:]] == list("3127")


def test_tok_bin_encodes_like_sentencepiece(corpus):
    out = corpus[1]
    sp = spm.SentencePieceProcessor(model_file=str(out / "tok300.model"))
    llama = Llama2Tokenizer.load(out / "tok300.bin", 300)  # what `llmpy run -z` and llama2.c's run read
    samples = ["the cat sat on a mat", "Lily found 3 shiny stones, 12 red apples.\nShe was happy!",
               "naïve café ✓ 日本", "zebra quux: 🙂 ~^", "x\n\ny", ""]
    for s in samples:
        ids = [1] + sp.encode(s)
        assert llama.encode(s, bos=True, eos=False) == ids
        assert llama.decode_all(ids[1:]).decode("utf-8") == s
    # the known difference: the trained model (like llama2.c's) collapses runs of spaces, run.c's encode does not
    assert sp.decode(sp.encode("a  b")) == "a b"
    assert llama.decode_all(llama.encode("a  b", bos=True)[1:]) == b"a  b"
    llmc = read_tokenizer(out / "tok300_llmc.bin")
    assert llmc.eot_token == 1 and llmc.decode(sp.encode(samples[1])).lstrip() == samples[1]


def test_data_tokenizer_and_decoder(corpus, tmp_path):
    files, out = corpus
    info = json.loads((out / "prepro.json").read_text())
    assert {k: info[k] for k in ("tokenizer", "vocab_size", "bos_id", "tokenizer_source")} == {
        "tokenizer": "sentencepiece", "vocab_size": 300, "bos_id": 1, "tokenizer_source": "trained"}
    tok = vocab.data_tokenizer(out / "text_train*.bin")
    assert (tok.kind, tok.vocab_size, tok.bos_id) == ("sentencepiece", 300, 1)
    assert (tok.sp_model_path, tok.llama2c_bin_path, tok.llmc_bin_path) == (
        out / "tok300.model", out / "tok300.bin", out / "tok300_llmc.bin")
    doc = documents_of(read_shard(out / "text_val.bin"), 1)[0]  # the leading part of the first file
    decoded = vocab.text_decoder(str(out / "text_train*.bin"))(doc)
    assert len(decoded) > 500 and files[0].read_text(encoding="utf-8").startswith(decoded)
    assert vocab.check_data_fits(out / "text_train.bin", "llama", 300) == tok
    with pytest.raises(LlmpyError, match="--vocab-size 300"):
        vocab.check_data_fits(out / "text_train.bin", "llama", 256)
    # GPT-2 data: EOT before every document, and a clear error for a Llama model
    g = tmp_path / "gpt2"
    prepro.prepare_text(files, g, verbose=False)
    tok = vocab.data_tokenizer(g / "text_train.bin")
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.llmc_bin_path) == ("gpt2", 50257, 50256, g / "gpt2_tokenizer.bin")
    ids = read_shard(g / "text_val.bin")[:30]
    assert vocab.text_decoder(g / "text_train.bin")(ids) == read_tokenizer(g / "gpt2_tokenizer.bin").decode(ids)
    with pytest.raises(LlmpyError, match="holds GPT-2 tokens.*--vocab-size N"):
        vocab.check_data_fits(g / "text_train*.bin", "llama", 50257)
    assert vocab.check_data_fits(g / "text_train*.bin", "gpt2", 50257).kind == "gpt2"
    with pytest.raises(LlmpyError, match="not GPT-2's"):
        vocab.check_data_fits(out / "text_train.bin", "gpt2", 50257)
    # shards without a prepro.json (made elsewhere), or not the ones it lists: unknown
    write_shard(tmp_path / "other_train.bin", np.arange(10), vocab_size=50257)
    assert vocab.data_tokenizer(tmp_path / "other_train.bin") is None
    assert vocab.text_decoder(tmp_path / "other_*.bin") is None
    assert vocab.check_data_fits(tmp_path / "other_train.bin", "llama", 512) is None
    write_shard(g / "stray_train.bin", np.arange(10), vocab_size=50257)
    assert vocab.data_tokenizer(g / "*_train.bin") is None
    # a prepro.json edited by hand into nonsense: unknown too
    sp_info = json.loads((out / "prepro.json").read_text())
    g_files = json.loads((g / "prepro.json").read_text())["files"]
    for key, value in (("vocab_size", "many"), ("tokenizer", "bytes")):
        (g / "prepro.json").write_text(json.dumps({**sp_info, "files": g_files, key: value}))
        assert vocab.data_tokenizer(g / "text_train.bin") is None


def test_another_tokenizer_in_the_same_dir_is_refused(corpus, tmp_path):
    files, _ = corpus
    out = tmp_path / "o"
    prepro.prepare_text(files[:1], out, vocab_size=320, verbose=False)
    before = (out / "text_train.bin").read_bytes()
    with pytest.raises(LlmpyError, match="320-token sentencepiece vocabulary.*--force"):
        prepro.prepare_text(files[:1], out, verbose=False)  # GPT-2 over it
    with pytest.raises(LlmpyError, match="--force"):
        prepro.prepare_text(files[:1], out, vocab_size=340, verbose=False)
    assert (out / "text_train.bin").read_bytes() == before
    prepro.prepare_text(files[:1], out, vocab_size=320, verbose=False)  # the same request: skipped
    prepro.prepare_text(files[:1], out, vocab_size=340, force=True, verbose=False)
    assert vocab.data_tokenizer(out / "text_train.bin").vocab_size == 340
    with pytest.raises(LlmpyError, match="not both"):
        prepro.prepare_text(files, tmp_path / "x", vocab_size=340, tokenizer="llama2", verbose=False)
    with pytest.raises(LlmpyError, match="no such file"):
        prepro.prepare_text(files, tmp_path / "x", tokenizer=tmp_path / "missing.model", verbose=False)
    assert main(["prepro", "text", str(files[0]), "--tokenizer", str(files[0]), "--out-dir", str(tmp_path / "y"),
                 "--quiet"]) == 2  # a text file is not a sentencepiece model


def test_default_corpus_with_a_small_vocab(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["prepro", "default", "--vocab-size", "384", "--quiet"]) == 0
    base = tmp_path / "cache" / "llmpy" / "data" / "default"
    d = base / "tok384"  # llama2.c's data/tok{V}: apart from the GPT-2 shards of the same corpus
    assert f"train: {d / 'default_train.bin'}" in capsys.readouterr().out
    sp = spm.SentencePieceProcessor(model_file=str(d / "tok384.model"))
    tokens = np.concatenate([read_shard(d / "default_val.bin"), read_shard(d / "default_train.bin")])
    docs = documents_of(tokens, 1)
    texts = prepro.default_documents()
    assert len(docs) == len(texts)
    assert docs[5].tolist() == [1] + sp.encode(texts[5])
    assert not (base / "prepro.json").exists()


def test_llama2_tokenizer_download(tmp_path, static_server, monkeypatch):
    root, url = static_server
    # Llama 2's tokenizer.model when ../shared has it, else a small model of the same kind
    if LLAMA2_MODEL.exists():
        model = LLAMA2_MODEL.read_bytes()
    else:
        (tmp_path / "t.txt").write_text("\n".join(sentences(random.Random(1), 300)))
        spm.SentencePieceTrainer.train(input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "t"),
                                       vocab_size=300, **LLAMA2C_TRAINER)
        model = (tmp_path / "t.model").read_bytes()
    (root / "tokenizer.model").write_bytes(model)
    digest = hashlib.sha256(model).hexdigest()
    with pytest.raises(LlmpyError, match="sha256"):
        vocab.llama2_tokenizer_model(f"{url}/tokenizer.model", "0" * 64, tmp_path / "bad")
    assert not (tmp_path / "bad" / "tokenizer.model").exists()
    path = vocab.llama2_tokenizer_model(f"{url}/tokenizer.model", digest, tmp_path / "ok")
    assert path.read_bytes() == model
    with pytest.raises(LlmpyError, match="tokenizer.model"):
        vocab.llama2_tokenizer_model(f"{url}/missing.model", digest, tmp_path / "none")
    # `--tokenizer llama2` downloads it once into ~/.cache/llmpy/models/llama2.c and copies it beside the shards
    monkeypatch.setattr(vocab, "LLAMA2_MODEL_URL", f"{url}/tokenizer.model")
    monkeypatch.setattr(vocab, "LLAMA2_MODEL_SHA256", digest)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    text = tmp_path / "story.txt"
    text.write_text("\n".join(sentences(random.Random(2), 400)))
    assert main(["prepro", "text", str(text), "--tokenizer", "llama2", "--quiet"]) == 0
    cached = tmp_path / "cache" / "llmpy" / "models" / "llama2.c" / "tokenizer.model"
    d = tmp_path / "cache" / "llmpy" / "data" / "text" / "llama2"
    assert cached.read_bytes() == model and (d / "tokenizer.model").read_bytes() == model
    sp = spm.SentencePieceProcessor(model_file=str(cached))
    assert (read_shard(d / "text_val.bin").tolist() + read_shard(d / "text_train.bin").tolist()
            == [sp.bos_id()] + sp.encode(text.read_text()))
    assert json.loads((d / "prepro.json").read_text())["tokenizer_source"] == digest


@needs_llama2
def test_llama2_tokenizer_from_a_local_file(corpus, tmp_path):
    files, _ = corpus
    out = tmp_path / "l2"
    prepro.prepare_text(files, out, tokenizer=str(LLAMA2_MODEL), verbose=False)
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    tokens = np.concatenate([read_shard(out / "text_val.bin"), read_shard(out / "text_train.bin")])
    assert [d.tolist() for d in documents_of(tokens, 1)] == [[1] + sp.encode(f.read_text()) for f in files]
    # tokenizer.bin: the same bytes as the one llama2.c ships, made by its tokenizer.py from this model
    assert (out / "tokenizer.bin").read_bytes() == LLAMA2_BIN.read_bytes()
    tok = vocab.data_tokenizer(out / "text_train.bin")
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.llama2c_bin_path) == ("sentencepiece", 32000, 1,
                                                                            out / "tokenizer.bin")
    assert json.loads((out / "prepro.json").read_text())["tokenizer_source"] == vocab.LLAMA2_MODEL_SHA256
    # without --out-dir the shards of Llama 2's tokenizer go to the dataset's llama2/ subdirectory
    assert vocab.VocabRequest.of(tokenizer=str(LLAMA2_MODEL)).subdir == "llama2"


def stories_archive(tmp_path, n_files=12, per_file=8):
    rng = random.Random(3)
    files = {f"data{i:02d}.json": [{"story": "  " + " ".join(sentences(rng, 4)) + ".\n\nThe end.  "}
                                   for _ in range(per_file)] for i in range(n_files)}
    archive = write_stories_archive(tmp_path / "stories.tar.gz", files)
    return archive, files


def test_tinystories_with_a_custom_vocab(tmp_path, monkeypatch):
    archive, files = stories_archive(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    train, val = tinystories.prepare_tinystories(source=archive, num_workers=1, vocab_size=320, verbose=False)
    base = tmp_path / "cache" / "llmpy" / "data" / "tinystories"
    d = base / "tok320"
    assert (train, val) == (str(d / "TinyStories_train.bin"), str(d / "TinyStories_val.bin"))
    assert (base / tinystories.ARCHIVE).exists()  # the archive stays in the dataset's directory
    # llama2.c's train_vocab by hand: the stories of the first 10 files, stripped, a line each
    names = sorted(files)
    (tmp_path / "tiny.txt").write_text("".join(s["story"].strip() + "\n" for n in names[:10] for s in files[n]))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "tiny.txt"), model_prefix=str(tmp_path / "ref"),
                                   vocab_size=320, num_threads=1, **LLAMA2C_TRAINER)
    ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "ref.model"))
    sp = spm.SentencePieceProcessor(model_file=str(d / "tok320.model"))
    assert [(sp.id_to_piece(i), sp.get_score(i)) for i in range(320)] == [
        (ref.id_to_piece(i), ref.get_score(i)) for i in range(320)]

    # llama2.c's pretokenize: every story stripped, [BOS] + ids, in file order (no shuffle); data00 is val
    def expected(split_names):
        return [t for n in split_names for s in files[n] for t in [1] + ref.encode(s["story"].strip())]

    assert read_shard(val).tolist() == expected(names[:1])
    assert read_shard(train).tolist() == expected(names[1:])
    tok = vocab.data_tokenizer(train)
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.sp_model_path) == ("sentencepiece", 320, 1, d / "tok320.model")


# ---------------------------------------------------------------------------------------------------------
# tinyshakespeare and fineweb with a sentencepiece vocabulary

SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


def sections_of(text):
    """llm.c's tinyshakespeare documents as its tinyshakespeare.py cuts them: EOT before the text and after
    every "\\n\\n" (here a NUL marks the cut)."""
    return ("\0" + text.replace("\n\n", "\n\n\0")).split("\0")[1:]


def trained_reference(tmp_path, texts, vocab_size, name="ref"):
    """llama2.c's train_vocab by hand: each text stripped on a line of its own, sentencepiece's trainer."""
    (tmp_path / f"{name}.txt").write_text("".join(t.strip() + "\n" for t in texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / f"{name}.txt"), model_prefix=str(tmp_path / name),
                                   vocab_size=vocab_size, num_threads=1, **LLAMA2C_TRAINER)
    return spm.SentencePieceProcessor(model_file=str(tmp_path / f"{name}.model"))


def test_tinyshakespeare_with_a_custom_vocab(tmp_path, monkeypatch, capsys):
    rng = random.Random(5)
    text = "\n\n".join(f"Speaker {i % 7}:\n" + "\n".join(sentences(rng, 3)) for i in range(1500)) + "\n"
    (tmp_path / "input.txt").write_text(text)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["prepro", "tinyshakespeare", "--input", str(tmp_path / "input.txt"), "--vocab-size", "320", "--quiet"]
    assert main(args) == 0
    base = tmp_path / "cache" / "llmpy" / "data" / "tinyshakespeare"
    d = base / "tok320"
    out = capsys.readouterr().out
    assert f"train: {d / 'tiny_shakespeare_train.bin'}" in out and f"tokenizer: {d / 'tok320.bin'}" in out
    assert (base / "tiny_shakespeare.txt").read_text() == text and not (d / "tiny_shakespeare.txt").exists()
    # the vocabulary: sentencepiece trained by hand on the sections
    sections = sections_of(text)
    ref = trained_reference(tmp_path, sections, 320)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tok320.model"))
    assert [(sp.id_to_piece(i), sp.get_score(i)) for i in range(320)] == [
        (ref.id_to_piece(i), ref.get_score(i)) for i in range(320)]
    # the tokens: [BOS] + sentencepiece's ids of every section; llm.c's split: the first 32,768 tokens are val
    val, train = read_shard(d / "tiny_shakespeare_val.bin"), read_shard(d / "tiny_shakespeare_train.bin")
    want = [t for s in sections for t in [1] + ref.encode(s)]
    assert len(val) == 32768 and val.tolist() + train.tolist() == want
    tok = vocab.data_tokenizer(d / "tiny_shakespeare_train.bin")
    assert (tok.kind, tok.vocab_size, tok.bos_id) == ("sentencepiece", 320, 1)
    # again: skipped; GPT-2 over these shards: refused, nothing lost
    before = (d / "tiny_shakespeare_train.bin").read_bytes()
    assert main(args[:-1]) == 0 and "skipping" in capsys.readouterr().out
    assert main(["prepro", "tinyshakespeare", "--input", str(tmp_path / "input.txt"), "--out-dir", str(d),
                 "--quiet"]) == 2
    assert "sentencepiece vocabulary" in capsys.readouterr().err
    assert (d / "tiny_shakespeare_train.bin").read_bytes() == before
    # too little text for the 32,768 val tokens: a clear error
    (tmp_path / "small.txt").write_text(text[:20000])
    with pytest.raises(LlmpyError, match="not enough for 32,768 val tokens"):
        prepro.prepare_tinyshakespeare(tmp_path / "small", source=tmp_path / "small.txt", vocab_size=320,
                                       verbose=False)


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare is absent")
def test_tinyshakespeare_4096_vocab_on_the_real_text(tmp_path):
    # the quality benchmark's data: llm.c's tinyshakespeare with a 4096-token vocabulary
    train, val = prepro.prepare_tinyshakespeare(tmp_path / "ts", source=SHAKESPEARE, vocab_size=4096, verbose=False)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "ts" / "tok4096.model"))
    assert sp.vocab_size() == 4096
    v, t = read_shard(val), read_shard(train)
    text = SHAKESPEARE.read_text()
    sections = sections_of(text)
    docs = documents_of(np.concatenate([v, t]), 1)
    assert len(v) == 32768 and len(docs) == len(sections)
    for i in range(0, len(sections), 97):
        assert docs[i].tolist() == [1] + sp.encode(sections[i])
        assert sp.decode(docs[i].tolist()).strip() == sections[i].strip()
    # val is the leading text, about the share of GPT-2's 32,768 of 337,028 tokens (9.7%)
    val_text = sp.decode([int(i) for i in v if i != 1])
    assert 0.05 < len(val_text) / len(text) < 0.12 and text.startswith(sections[0])


def test_fineweb_with_a_custom_vocab(tmp_path, static_server, monkeypatch):
    from llmpy.data import fineweb

    root, url = static_server
    tree = root / "api" / "datasets" / "HuggingFaceFW" / "fineweb-edu" / "tree" / "main" / "sample"
    data = root / "datasets" / "HuggingFaceFW" / "fineweb-edu" / "resolve" / "main" / "sample" / "10BT"
    tree.mkdir(parents=True)
    data.mkdir(parents=True)
    rng = random.Random(9)
    texts = [[" ".join(sentences(rng, 6)) for _ in range(40)] for _ in range(2)]
    listing = []
    for i, lines in enumerate(texts):  # stand-ins for parquet files: gzipped lines between parquet's magic
        raw = b"PAR1" + gzip.compress("\n".join(lines).encode()) + b"PAR1"
        (data / f"{i:03d}_00000.parquet").write_bytes(raw)
        lfs = {"oid": hashlib.sha256(raw).hexdigest(), "size": len(raw), "pointerSize": 134}
        listing.append({"type": "file", "path": f"sample/10BT/{i:03d}_00000.parquet", "size": len(raw), "lfs": lfs})
    (tree / "10BT").write_text(json.dumps(listing))
    monkeypatch.setattr(fineweb, "HF", url)
    monkeypatch.setattr(fineweb, "parquet_texts",
                        lambda p: gzip.decompress(Path(p).read_bytes()[4:-4]).decode().split("\n"))
    monkeypatch.setattr(fineweb, "VOCAB_TRAIN_DOCS", 50)  # the vocabulary sees only the leading documents
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    train, val = fineweb.prepare_fineweb(edu=True, shard_size=2000, num_workers=1, vocab_size=300, verbose=False)
    base = tmp_path / "cache" / "llmpy" / "data" / "edu_fineweb10B"
    d = base / "tok300"
    assert (train, val) == (str(d / "edu_fineweb_train_*.bin"), str(d / "edu_fineweb_val_*.bin"))
    assert len(list((base / "parquet").glob("*.parquet"))) == 2  # the downloads stay in the dataset's directory
    docs = texts[0] + texts[1]
    ref = trained_reference(tmp_path, docs[:50], 300)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tok300.model"))
    assert [sp.id_to_piece(i) for i in range(300)] == [ref.id_to_piece(i) for i in range(300)]
    shards = sorted(d.glob("edu_fineweb_*.bin"), key=lambda p: p.name[-10:])
    assert shards[0].name == "edu_fineweb_val_000000.bin" and len(shards) > 1
    got = np.concatenate([read_shard(p) for p in shards]).tolist()
    assert got == [t for doc in docs for t in [1] + ref.encode(doc)]
    assert vocab.data_tokenizer(train).vocab_size == 300
