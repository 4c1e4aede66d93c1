"""TinyStories (llm.c's dev/data/tinystories.py): ~2.1M short stories -> TinyStories_{val,train}.bin.

The archive (TinyStories_all_data.tar.gz, ~1.5 GB) holds 50 JSON files of stories; the first is the val
split, the other 49 train. As in llm.c, the stories of each JSON file are shuffled with
random.Random(1337 + its index within the split), stripped, and written as [EOT] + GPT-2 tokens, giving
19,043,638 val and 925,653,391 train tokens. Unlike llm.c, shards are written in file order, not in the
order worker processes finish, so the output is the same on every run. llm.c's gpt2_tokenizer.bin is
written beside them.

llama2.c's way (llmpy.data.vocab): `--vocab-size V` first trains a sentencepiece vocabulary on the stories of
the first 10 JSON files (llama2.c's train_vocab), `--tokenizer llama2` uses Llama 2's; the stories, stripped,
are then written as [BOS] + tokens in file order, unshuffled, as llama2.c's pretokenize does (its first
JSON file is its val split too), into tok{V}/ or llama2/ under the dataset's directory. The archive stays
in the dataset's directory, shared by all tokenizations.

The download is checked against the size and sha256 the Hugging Face listing gives for the archive (when
the listing answers) and must be a tar.gz that opens; a local archive (--input) must open too.
"""

import json
import os
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

from llmpy.data.download import HF, check_tar_gz, hf_files
from llmpy.data.prepro import (
    default_data_dir,
    encode_documents,
    fetch,
    mark_done,
    prepare_out_dir,
    say,
    skip_if_done,
    tokenizer_for,
)
from llmpy.data.vocab import VocabRequest
from llmpy.errors import LlmpyError
from llmpy.fileio import current_umask
from llmpy.formats.tokens import ShardWriter

HF_REPO = "roneneldan/TinyStories"
ARCHIVE = "TinyStories_all_data.tar.gz"
TINYSTORIES_URL = f"{HF}/datasets/{HF_REPO}/resolve/main/{ARCHIVE}"
EXTRACTED = "TinyStories_all_data"
SHUFFLE_SEED = 1337
VOCAB_TRAIN_FILES = 10  # llama2.c's train_vocab: the stories of the first 10 JSON files
DIR_MODE = 0o777


def extract(archive, out_dir, verbose=True):
    """Unpack the archive into out_dir/TinyStories_all_data (via a temporary directory); the JSON files."""
    target = Path(out_dir) / EXTRACTED
    if not target.exists():
        say(verbose, f"unpacking {archive} ...")
        tmp = tempfile.mkdtemp(dir=out_dir, prefix=f".{EXTRACTED}.")  # a fresh, unpredictable name
        try:
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")  # the "data" filter refuses absolute paths and links out
            except (tarfile.TarError, OSError, EOFError) as e:
                raise LlmpyError(f"{archive} is not a readable tar.gz ({e}); delete it to download it again") from e
            os.chmod(tmp, DIR_MODE & ~current_umask())  # mkdtemp's 0700 -> what mkdir would have made
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    files = sorted(target.glob("*.json"))
    if not files:
        raise LlmpyError(f"no .json story files in {target}; delete it and {archive} to start over")
    return files


def published_archive(verbose):
    """(size, sha256) of the archive from the Hugging Face listing, or (None, None) when it does not answer."""
    try:
        return hf_files(HF_REPO).get(ARCHIVE, (None, None))
    except LlmpyError as e:
        say(verbose, f"{e}; the download is checked only for being a whole tar.gz")
        return None, None


def split_stories(files, shuffle=True):
    """The stories of the JSON files in order, stripped; with shuffle (llm.c's way), each file's stories
    shuffled by random.Random(1337 + its index)."""
    for index, path in enumerate(files):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise LlmpyError(f"{path} is not a TinyStories JSON file ({e}); delete it to unpack again") from e
        if shuffle:
            random.Random(SHUFFLE_SEED + index).shuffle(data)
        for example in data:
            yield example["story"].strip()


def prepare_tinystories(out_dir=None, source=None, num_workers=None, force=False, verbose=True, vocab_size=None,
                        tokenizer=None):
    """Download, unpack and tokenize TinyStories; returns (train_pattern, val_pattern).

    source: a local copy of TinyStories_all_data.tar.gz. num_workers: tokenizer processes (None: all cores).
    vocab_size / tokenizer: llama2.c's tokenizations (module docstring), else GPT-2's (llm.c's).
    """
    request = VocabRequest.of(vocab_size, tokenizer)
    shard_dir = prepare_out_dir("tinystories", out_dir, force, request)
    out_dir = Path(out_dir) if out_dir is not None else default_data_dir("tinystories")  # the archive's
    done = skip_if_done(shard_dir, verbose, request)
    if done:
        return done
    size = sha256 = None
    if source is None and not (out_dir / ARCHIVE).exists():
        size, sha256 = published_archive(verbose)
    archive = fetch(TINYSTORIES_URL, out_dir, ARCHIVE, sha256, source, verbose, size=size, validate=check_tar_gz)
    files = extract(archive, out_dir, verbose)
    say(verbose, f"number of story files: {len(files)}")
    llmc_way = request.kind == "gpt2"
    spec, record = tokenizer_for(request, shard_dir, lambda: split_stories(files[:VOCAB_TRAIN_FILES], False),
                                 force, verbose)
    written = []
    for split, split_files in (("val", files[:1]), ("train", files[1:])):
        path = shard_dir / f"TinyStories_{split}.bin"
        with ShardWriter(path, vocab_size=record["vocab_size"]) as writer:
            stories = split_stories(split_files, shuffle=llmc_way)
            for toks in encode_documents(stories, spec, num_workers=num_workers, chunksize=256):
                writer.write(toks)
        say(verbose, f"writing {writer.ntok:,} tokens to {path}")
        written.append((path, writer.ntok))
    mark_done(shard_dir, "TinyStories_train.bin", "TinyStories_val.bin", written, verbose, **record)
    return str(shard_dir / "TinyStories_train.bin"), str(shard_dir / "TinyStories_val.bin")
