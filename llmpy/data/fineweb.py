"""FineWeb and FineWeb-Edu (llm.c's dev/data/fineweb.py): web text -> 100M-token shards.

The "sample-10BT" (or "sample-100BT") parquet files of HuggingFaceFW/fineweb or HuggingFaceFW/fineweb-edu
are listed through the Hugging Face API, downloaded one at a time into the cache (resumable, with a
progress bar; each checked against the size and sha256 of the listing and for parquet's magic), and their
"text" column tokenized as [EOT] + GPT-2 tokens by a process pool. Shards of `shard_size` tokens (default
10^8) are named {fineweb,edu_fineweb}_{val,train}_{index:06d}.bin; shard 0 is val, as in llm.c; llm.c's
gpt2_tokenizer.bin is written beside them. `max_shards` stops early, for a small sample.

llama2.c's way (llmpy.data.vocab): `--vocab-size V` first trains a sentencepiece vocabulary on the first
100,000 documents (VOCAB_TRAIN_DOCS; llama2.c's train_vocab likewise takes a leading part of its data),
`--tokenizer llama2|PATH` uses Llama 2's or that model; every document then starts with BOS, and the
shards go to the tok{V}/ or llama2/ subdirectory (the parquet files stay in the dataset's directory, shared
by all tokenizations).

Needs pyarrow to read parquet (`pip install pyarrow`); the `datasets` library is not used. Not handled:
other FineWeb subsets or dumps.
"""

from itertools import islice
from pathlib import Path

from llmpy.data.download import check_parquet, download_file, hf_files
from llmpy.data.prepro import (
    SHARD_SIZE,
    default_data_dir,
    encode_documents,
    mark_done,
    prepare_out_dir,
    skip_if_done,
    tokenizer_for,
    write_sharded,
)
from llmpy.data.vocab import VocabRequest
from llmpy.errors import LlmpyError, import_optional

HF = "https://huggingface.co"
REPOS = {"fineweb": "HuggingFaceFW/fineweb", "edu_fineweb": "HuggingFaceFW/fineweb-edu"}
SAMPLES = {"10B": "sample/10BT", "100B": "sample/100BT"}
BATCH_ROWS = 1024
VOCAB_TRAIN_DOCS = 100_000  # --vocab-size trains on this many leading documents


def list_parquet_files(repo, folder):
    """[(path, size, sha256)] of the parquet files under `folder` of a Hugging Face dataset repo, sorted by path.

    The size and sha256 come from the Hub's listing (Git LFS keeps both), so every download is checked.
    """
    try:
        files = hf_files(repo, folder, base=HF)
    except LlmpyError as e:
        raise LlmpyError(f"{e} fineweb needs the network") from e
    return sorted((path, size, sha) for path, (size, sha) in files.items() if path.endswith(".parquet"))


def parquet_texts(path):
    """The "text" column of a parquet file, batch by batch."""
    pq = import_optional("pyarrow.parquet", "reading FineWeb's parquet files", "fineweb")
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["text"]):
            yield from batch.column(0).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        raise LlmpyError(f"{path} is not a readable FineWeb parquet file ({e}); delete it to download again") from e


def fineweb_documents(repo, folder, out_dir, verbose):
    for rel, size, sha256 in list_parquet_files(repo, folder):
        local = out_dir / "parquet" / rel.replace("/", "_")
        download_file(f"{HF}/datasets/{repo}/resolve/main/{rel}", local, sha256=sha256, size=size,
                      validate=check_parquet, progress=verbose)
        yield from parquet_texts(local)


def prepare_fineweb(out_dir=None, version="10B", edu=False, shard_size=SHARD_SIZE, max_shards=None,
                    num_workers=None, force=False, verbose=True, vocab_size=None, tokenizer=None):
    """Tokenize FineWeb (edu=False) or FineWeb-Edu into shards; returns (train_pattern, val_pattern).

    vocab_size / tokenizer: llama2.c's tokenizations (module docstring), else GPT-2's (llm.c's)."""
    if version not in SAMPLES:
        raise LlmpyError(f"unknown FineWeb sample {version!r}; use one of {', '.join(SAMPLES)}")
    name = "edu_fineweb" if edu else "fineweb"
    request = VocabRequest.of(vocab_size, tokenizer)
    shard_dir = prepare_out_dir(f"{name}{version}", out_dir, force, request)
    out_dir = Path(out_dir) if out_dir is not None else default_data_dir(f"{name}{version}")  # the parquet files'
    done = skip_if_done(shard_dir, verbose, request)
    if done:
        return done

    def documents():
        return fineweb_documents(REPOS[name], SAMPLES[version], out_dir, verbose)

    spec, record = tokenizer_for(request, shard_dir, lambda: islice(documents(), VOCAB_TRAIN_DOCS), force, verbose)
    tokens = encode_documents(documents(), spec, num_workers=num_workers, chunksize=64)
    written = write_sharded(tokens, shard_dir, name, shard_size, record["vocab_size"], verbose, max_shards=max_shards)
    train, val = f"{name}_train_*.bin", f"{name}_val_*.bin"
    mark_done(shard_dir, train, val, written, verbose, **record)
    return str(shard_dir / train), str(shard_dir / val)
