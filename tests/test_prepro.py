"""Dataset preparation: llm.c's tinyshakespeare split, the offline default corpus, the user's text files
(GPT-2 and custom sentencepiece vocabularies), sharding, tinystories and fineweb on local files."""

import glob
import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import write_stories_archive

from llmpy.cli import main
from llmpy.data import fineweb, prepro, tinystories
from llmpy.errors import LlmpyError
from llmpy.formats import tokenizer_file
from llmpy.formats.tokens import read_shard
from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
LLAMA2_TOKENIZER = SHARED / "llama2" / "tokenizer.bin"
EOT = 50256


@pytest.fixture(scope="module")
def enc():
    return get_gpt2_tokenizer()


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare is absent")
def test_tinyshakespeare_matches_llmc(tmp_path, static_server, enc):
    root, url = static_server
    (root / "input.txt").write_bytes(SHAKESPEARE.read_bytes())
    train, val = prepro.prepare_tinyshakespeare(tmp_path / "ts", url=f"{url}/input.txt", verbose=False)
    v, t = read_shard(val), read_shard(train)
    assert (len(v), len(t)) == (32768, 305260)  # llm.c's tinyshakespeare.py prints exactly these
    # independently: llm.c's recipe with tiktoken directly on the whole text
    text = SHAKESPEARE.read_text()
    ref = enc.encode("<|endoftext|>" + text.replace("\n\n", "\n\n<|endoftext|>"), allowed_special={"<|endoftext|>"})
    np.testing.assert_array_equal(np.concatenate([v, t]), ref)
    # a local source file gives the same, without any server
    train2, _ = prepro.prepare_tinyshakespeare(tmp_path / "ts2", source=SHAKESPEARE, verbose=False)
    np.testing.assert_array_equal(read_shard(train2), t)
    # llm.c's C train_gpt2 needs gpt2_tokenizer.bin beside the shards: the same bytes the API writes
    tokenizer_file.write_tokenizer(tmp_path / "ref.bin", enc)
    assert (tmp_path / "ts" / "gpt2_tokenizer.bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()


def test_tinyshakespeare_bad_download(tmp_path, static_server):
    root, url = static_server
    (root / "input.txt").write_text("not shakespeare\n\nat all")
    with pytest.raises(LlmpyError, match="but the file is 1,115,394 bytes"):
        prepro.prepare_tinyshakespeare(tmp_path / "ts", url=f"{url}/input.txt", verbose=False)
    (root / "input.txt").write_bytes(b"x" * 1115394)  # the right size, other bytes
    with pytest.raises(LlmpyError, match="checksum mismatch"):
        prepro.prepare_tinyshakespeare(tmp_path / "ts", url=f"{url}/input.txt", verbose=False)
    assert list((tmp_path / "ts").iterdir()) == []
    # no network: the message names the offline route
    with pytest.raises(LlmpyError, match="no network.*--input FILE"):
        prepro.prepare_tinyshakespeare(tmp_path / "ts", url="http://127.0.0.1:9/input.txt", verbose=False)


def test_tinyshakespeare_input_offline(tmp_path, capsys):
    # llm.c's quick start without a network: a local input.txt; one that is not the published file warns
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 400
    mine = tmp_path / "input.txt"
    mine.write_text(text)
    out = tmp_path / "ts"
    assert main(["prepro", "tinyshakespeare", "--input", str(mine), "--out-dir", str(out), "--quiet"]) != 0
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "is not the published tiny_shakespeare.txt" in captured.err
    assert "only" in captured.err  # too few tokens for llm.c's 32,768-token val split: a clear error
    mine.write_text(text * 30)
    assert main(["prepro", "tinyshakespeare", "--input", str(mine), "--out-dir", str(out), "--quiet", "--force"]) == 0
    assert (out / "tiny_shakespeare.txt").read_text() == text * 30
    assert f"tokenizer: {out / 'gpt2_tokenizer.bin'}" in capsys.readouterr().out


def test_default_corpus_offline(tmp_path, enc, capsys):
    assert main(["prepro", "default", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "writing 16,384 tokens" in out
    val, train = read_shard(tmp_path / "default_val.bin"), read_shard(tmp_path / "default_train.bin")
    tokens = np.concatenate([val, train])
    docs = prepro.default_documents()
    assert int((tokens == EOT).sum()) == len(docs) and tokens[0] == EOT
    assert enc.decode(tokens.tolist()) == "".join("<|endoftext|>" + d for d in docs)
    assert main(["prepro", "default", "--out-dir", str(tmp_path)]) == 0  # second run skips
    assert "skipping" in capsys.readouterr().out
    tr, va = prepro.prepare_default(tmp_path, verbose=False)
    assert (tr, va) == (str(tmp_path / "default_train.bin"), str(tmp_path / "default_val.bin"))


def test_text_files_gpt2(tmp_path, enc):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("First paragraph here.\n\nSecond one, café.\n" * 30)
    b.write_text("Another file entirely.\n" * 40)
    train, val = prepro.prepare_text([a, b], tmp_path / "out", doc_split="file", verbose=False)
    toks = np.concatenate([read_shard(val)] + [read_shard(p) for p in sorted(glob.glob(train))])
    want = [EOT] + enc.encode_ordinary(a.read_text()) + [EOT] + enc.encode_ordinary(b.read_text())
    assert toks.tolist() == want
    assert len(read_shard(val)) == int(len(want) * 0.1)
    # many processes give the same tokens, in the same order
    docs = [f"doc {i} " * (i % 7 + 1) for i in range(50)]
    one = list(prepro.encode_documents(docs, num_workers=1))
    two = list(prepro.encode_documents(docs, num_workers=2, chunksize=3))
    assert all(np.array_equal(x, y) for x, y in zip(one, two)) and len(one) == len(two) == 50


def test_text_undecodable_and_empty(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text \xff\xfe broken" + b" more words" * 20)
    with pytest.raises(LlmpyError, match=r"bad.txt is not valid utf-8 text \(byte 10"):
        prepro.prepare_text([bad], tmp_path / "out", verbose=False)
    assert not list((tmp_path / "out").glob("*.bin"))
    assert main(["prepro", "text", str(bad), "--out-dir", str(tmp_path / "o2"), "--encoding", "latin-1",
                 "--quiet"]) == 0
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hi")
    with pytest.raises(LlmpyError, match="too few"):
        prepro.prepare_text([tiny], tmp_path / "o3", verbose=False)


def test_custom_vocab(tmp_path):
    from llmpy.formats.tokenizer_file import read_tokenizer
    from llmpy.tokenizers.bpe_train import SentencePieceTokenizer
    from llmpy.tokenizers.llama2 import Llama2Tokenizer

    corpus = tmp_path / "corpus.txt"
    words = ["the cat sat on the mat", "a dog ran far away", "birds sing in the morning", "naïve café 42"]
    rng = random.Random(0)
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(5)) for _ in range(300)))
    rc = main(["prepro", "text", str(corpus), "--vocab-size", "300", "--doc-split", "paragraph",
               "--out-dir", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    tok = SentencePieceTokenizer(tmp_path / "out" / "tok300.model")
    assert tok.n_vocab == 300 and tok.eot_token == 1
    val = read_shard(tmp_path / "out" / "text_val.bin")
    train = read_shard(tmp_path / "out" / "text_train.bin")
    assert val.dtype == np.uint16 and int(max(val.max(), train.max())) < 300
    all_toks = np.concatenate([val, train])
    docs = np.split(all_toks, np.flatnonzero(all_toks == 1))[1:]  # every document starts with BOS
    texts = prepro.tinyshakespeare_sections(corpus.read_text())
    assert len(docs) == len(texts)
    assert [tok.decode(d[1:].tolist()) for d in docs[:20]] == [t for t in texts[:20]]
    llmc = read_tokenizer(tmp_path / "out" / "tok300_llmc.bin")
    assert llmc.decode(docs[3][1:].tolist()).lstrip() == texts[3]
    # tok300.bin is llama2.c's format, what `llmpy run -z` loads: it encodes as sentencepiece does
    llama = Llama2Tokenizer.load(tmp_path / "out" / "tok300.bin", 300)
    assert llama.encode(texts[3].strip(), bos=True) == [1] + tok.encode(texts[3].strip())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "prepro.json", "text_train.bin", "text_val.bin", "tok300.bin", "tok300.model", "tok300.vocab",
        "tok300_llmc.bin"]
    with pytest.raises(LlmpyError, match="vocabulary"):
        prepro.prepare_text([corpus], tmp_path / "o2", vocab_size=50, verbose=False)


@pytest.mark.skipif(not LLAMA2_TOKENIZER.with_suffix(".model").exists() or not LLAMA2_TOKENIZER.exists(),
                    reason="../shared/data/llama2 is absent")
def test_llama2c_tokenizer_bin_from_sentencepiece(tmp_path):
    # llama2.c's tokenizer.py turned Llama 2's tokenizer.model into its tokenizer.bin: the same bytes here
    from llmpy.tokenizers.bpe_train import llama2c_tokenizer

    llama2c_tokenizer(LLAMA2_TOKENIZER.with_suffix(".model")).save(tmp_path / "tokenizer.bin")
    assert (tmp_path / "tokenizer.bin").read_bytes() == LLAMA2_TOKENIZER.read_bytes()


def test_write_sharded(tmp_path):
    docs = [np.arange(i * 100, i * 100 + n, dtype=np.uint16) for i, n in enumerate([5, 13, 2, 9, 30])]
    written = prepro.write_sharded(iter(docs), tmp_path, "web", shard_size=10, verbose=False)
    names = [p.name for p, _ in written]
    assert names == ["web_val_000000.bin"] + [f"web_train_{i:06d}.bin" for i in range(1, 6)]
    assert [n for _, n in written] == [10, 10, 10, 10, 10, 9]
    np.testing.assert_array_equal(np.concatenate([read_shard(p) for p, _ in written]), np.concatenate(docs))
    few = prepro.write_sharded(iter(docs), tmp_path / "few", "web", shard_size=10, verbose=False, max_shards=2)
    assert [n for _, n in few] == [10, 10] and len(list((tmp_path / "few").iterdir())) == 2


def test_tinystories_from_local_archive(tmp_path, enc):
    files = {f"data{i:02d}.json": [{"story": f"  Story {i}-{j} about a cat.  "} for j in range(6)] for i in range(3)}
    archive = write_stories_archive(tmp_path / "stories.tar.gz", files)
    train, val = tinystories.prepare_tinystories(tmp_path / "out", source=archive, num_workers=1, verbose=False)

    def expected(names):
        out = []
        for index, name in enumerate(names):
            stories = [d["story"] for d in files[name]]
            random.Random(1337 + index).shuffle(stories)
            for s in stories:
                out += [EOT] + enc.encode_ordinary(s.strip())
        return out

    assert read_shard(val).tolist() == expected(["data00.json"])
    assert read_shard(train).tolist() == expected(["data01.json", "data02.json"])


def test_fineweb_pipeline_on_local_server(tmp_path, static_server, monkeypatch, enc):
    root, url = static_server
    tree = root / "api" / "datasets" / "HuggingFaceFW" / "fineweb" / "tree" / "main" / "sample"
    tree.mkdir(parents=True)
    data = root / "datasets" / "HuggingFaceFW" / "fineweb" / "resolve" / "main" / "sample" / "10BT"
    data.mkdir(parents=True)
    texts = {0: [f"web page {j}" for j in range(20)], 1: [f"other page {j}!" for j in range(20)]}
    listing = [{"type": "directory", "path": "sample/10BT/x"}]
    for i, lines in texts.items():
        # stand-ins for parquet files: gzipped lines of text between parquet's magic
        raw = b"PAR1" + gzip.compress("\n".join(lines).encode()) + b"PAR1"
        (data / f"{i:03d}_00000.parquet").write_bytes(raw)
        lfs = {"oid": hashlib.sha256(raw).hexdigest(), "size": len(raw), "pointerSize": 134}
        listing.insert(0, {"type": "file", "path": f"sample/10BT/{i:03d}_00000.parquet", "size": len(raw), "lfs": lfs})
    (tree / "10BT").write_text(json.dumps(listing))
    monkeypatch.setattr(fineweb, "HF", url)
    monkeypatch.setattr(fineweb, "parquet_texts",
                        lambda p: gzip.decompress(Path(p).read_bytes()[4:-4]).decode().split("\n"))
    train, val = fineweb.prepare_fineweb(tmp_path / "fw", shard_size=64, num_workers=2, verbose=False)
    shards = sorted(Path(tmp_path / "fw").glob("fineweb_*.bin"), key=lambda p: p.name[-10:])
    assert shards[0].name == "fineweb_val_000000.bin" and len(shards) > 2
    got = np.concatenate([read_shard(p) for p in shards]).tolist()
    want = [t for text in texts[0] + texts[1] for t in [EOT] + enc.encode_ordinary(text)]
    assert got == want
    assert val.endswith("fineweb_val_*.bin") and train.endswith("fineweb_train_*.bin")
    assert (tmp_path / "fw" / "gpt2_tokenizer.bin").is_file()
    # a file that is not what the listing says (another sha256) is refused and deleted
    changed = bytearray((data / "000_00000.parquet").read_bytes())
    changed[10] ^= 1  # same size, same magic, one bit off
    (data / "000_00000.parquet").write_bytes(bytes(changed))
    with pytest.raises(LlmpyError, match="checksum mismatch"):
        fineweb.prepare_fineweb(tmp_path / "fw2", shard_size=64, num_workers=1, verbose=False)
    assert not list((tmp_path / "fw2" / "parquet").glob("000_*"))


def test_local_inputs_are_checked(tmp_path):
    from llmpy.data.hellaswag import prepare_hellaswag

    bad = tmp_path / "hellaswag_val.jsonl"
    bad.write_text('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0}\n{"ctx": "no endings"}\n')
    with pytest.raises(LlmpyError, match=r"is not the expected hellaswag_val.jsonl: line 2 lacks the keys \['endings'"):
        prepare_hellaswag(tmp_path / "hs", source=bad, verbose=False)
    page = tmp_path / "TinyStories_all_data.tar.gz"
    page.write_text("<!DOCTYPE html><html><body>404</body></html>")
    with pytest.raises(LlmpyError, match="HTML page"):
        tinystories.prepare_tinystories(tmp_path / "st", source=page, verbose=False)
    page.write_bytes(gzip.compress(b"not a tar archive" * 100))
    with pytest.raises(LlmpyError, match="not a readable tar.gz"):
        tinystories.prepare_tinystories(tmp_path / "st", source=page, verbose=False)
    assert not list((tmp_path / "st").glob("*.tar.gz")) and not list((tmp_path / "hs").glob("*.jsonl"))
