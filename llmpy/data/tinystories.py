"""TinyStories (llm.c's dev/data/tinystories.py): ~2.1M short stories -> TinyStories_{val,train}.bin.

The archive (TinyStories_all_data.tar.gz, ~1.5 GB) holds 50 JSON files of stories; the first is the val
split, the other 49 train. As in llm.c, the stories of each JSON file are shuffled with
random.Random(1337 + its index within the split), stripped, and written as [EOT] + GPT-2 tokens, giving
19,043,638 val and 925,653,391 train tokens. Unlike llm.c, shards are written in file order, not in the
order worker processes finish, so the output is the same on every run.
"""

import json
import os
import random
import shutil
import tarfile
from pathlib import Path

from llmpy.data.prepro import encode_documents, fetch, mark_done, prepare_out_dir, say, skip_if_done
from llmpy.errors import LlmpyError
from llmpy.formats.tokens import ShardWriter
from llmpy.tokenizers.gpt2 import N_VOCAB

TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories_all_data.tar.gz"
ARCHIVE = "TinyStories_all_data.tar.gz"
EXTRACTED = "TinyStories_all_data"
SHUFFLE_SEED = 1337


def extract(archive, out_dir, verbose=True):
    """Unpack the archive into out_dir/TinyStories_all_data (via a temporary directory); the JSON files."""
    target = Path(out_dir) / EXTRACTED
    if not target.exists():
        say(verbose, f"unpacking {archive} ...")
        tmp = target.with_name(EXTRACTED + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # the "data" filter refuses absolute paths and links out
        except (tarfile.TarError, OSError, EOFError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LlmpyError(f"{archive} is not a readable tar.gz ({e}); delete it to download it again") from e
        os.replace(tmp, target)
    files = sorted(target.glob("*.json"))
    if not files:
        raise LlmpyError(f"no .json story files in {target}; delete it and {archive} to start over")
    return files


def split_stories(files):
    """The stories of the JSON files in order, each file's stories shuffled by random.Random(1337 + index)."""
    for index, path in enumerate(files):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise LlmpyError(f"{path} is not a TinyStories JSON file ({e}); delete it to unpack again") from e
        random.Random(SHUFFLE_SEED + index).shuffle(data)
        for example in data:
            yield example["story"].strip()


def prepare_tinystories(out_dir=None, source=None, num_workers=None, force=False, verbose=True):
    """Download, unpack and tokenize TinyStories; returns (train_pattern, val_pattern).

    source: a local copy of TinyStories_all_data.tar.gz. num_workers: tokenizer processes (None: all cores).
    """
    out_dir = prepare_out_dir("tinystories", out_dir, force)
    done = skip_if_done(out_dir, verbose)
    if done:
        return done
    archive = fetch(TINYSTORIES_URL, out_dir, ARCHIVE, None, source, verbose)
    files = extract(archive, out_dir, verbose)
    say(verbose, f"number of story files: {len(files)}")
    written = []
    for split, split_files in (("val", files[:1]), ("train", files[1:])):
        path = out_dir / f"TinyStories_{split}.bin"
        with ShardWriter(path, vocab_size=N_VOCAB) as writer:
            for toks in encode_documents(split_stories(split_files), num_workers=num_workers, chunksize=256):
                writer.write(toks)
        say(verbose, f"writing {writer.ntok:,} tokens to {path}")
        written.append((path, writer.ntok))
    mark_done(out_dir, "TinyStories_train.bin", "TinyStories_val.bin", written)
    return str(out_dir / "TinyStories_train.bin"), str(out_dir / "TinyStories_val.bin")
