"""Dataset preparation (llm.c's dev/data/*.py): raw text -> documents -> tokens -> llm.c shards.

Every dataset follows the same recipe: fetch the text into a cache directory (skipped when present; the
download checked for size, sha256 when a sum is known, and format), or copy a local file given instead (a
dataset's --input), cut it into documents, tokenize each as [EOT] + tokens (EOT, GPT-2's <|endoftext|>,
separates documents), and write llm.c shards with a val/train split. GPT-2 datasets also get llm.c's
`gpt2_tokenizer.bin` beside the shards (llm.c's C train_gpt2 reads it). A `prepro.json` in the output
directory records what was written; when it is present and its shards still exist the work is skipped.
Every file is written atomically (llmpy.fileio). Every `prepare_*` returns (train_pattern, val_pattern),
globs for llmpy.data.dataloader.

Here: the offline `default` corpus (the standard library's pydoc_data topics, English text every Python
carries), `tinyshakespeare` (llm.c's exact split: 32,768 val and 305,260 train tokens) and `text` (your
own files). tinystories, fineweb and hellaswag live in their own modules; llmpy.cli.prepro puts them all
behind `llmpy prepro NAME`. Every dataset but hellaswag can also be tokenized as llama2.c does, with a
sentencepiece vocabulary trained first (--vocab-size) or Llama 2's (--tokenizer llama2), BOS before every
document: see llmpy.data.vocab, which also reads back which tokenizer a dataset's shards hold.

Not handled: llama-3 tokenization (llm.c's uint32 "llama-3" shards can be read, not produced from
llama-3's tokenizer here).
"""

import filecmp
import json
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmpy.data.download import CHUNK_BYTES, check_not_html, download_file, sha256_of
from llmpy.data.vocab import GPT2_RECORD, VocabRequest, make_tokenizer
from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write_text, atomic_write_with, cache_dir
from llmpy.formats.tokens import UINT16_VOCAB_LIMIT, ShardWriter, read_header, write_shard

MARKER = "prepro.json"
GPT2_TOKENIZER_FILE = "gpt2_tokenizer.bin"  # llm.c's tokenizer file, which its C train_gpt2 loads for samples
INPUT_HINT = ", or pass a local copy with --input FILE"
SHARD_SIZE = 10**8  # tokens per shard for sharded datasets (llm.c's fineweb default)
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_BYTES = 1115394
TINYSHAKESPEARE_VAL_TOKENS = 32768  # llm.c: the first 32,768 tokens (~10%) are the val split
DEFAULT_VAL_TOKENS = 16384  # the default corpus is ~115k tokens: the first 16,384 are val
TEXT_VAL_FRACTION = 0.1
SECTION_SEP = "\n\n"


def default_data_dir(name):
    """Where `llmpy prepro NAME` writes by default: $XDG_CACHE_HOME/llmpy/data/NAME, else ~/.cache/llmpy/..."""
    return cache_dir("data", name)


# ---------------------------------------------------------------------------------------------------------
# tokenizing documents, in one process or many


@dataclass(frozen=True)
class TokenizerSpec:
    """A picklable recipe for a tokenizer, so worker processes can build their own copy.

    kind "gpt2": path is an optional vocab_dir (see llmpy.tokenizers.gpt2);
    kind "sentencepiece": path is the .model file of a custom vocabulary (llmpy.tokenizers.bpe_train).
    """

    kind: str = "gpt2"
    path: str | None = None

    def load(self):
        if self.kind == "gpt2":
            from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer

            return get_gpt2_tokenizer(self.path)
        if self.kind == "sentencepiece":
            from llmpy.tokenizers.bpe_train import SentencePieceTokenizer

            return SentencePieceTokenizer(self.path)
        raise LlmpyError(f"unknown tokenizer kind {self.kind!r}; use gpt2 or sentencepiece")


def encode_document(tok, text):
    """[EOT] + the tokens of `text`, as uint16 (or uint32 for vocabularies over 65,536 tokens)."""
    ids = tok.encode_ordinary(text)
    out = np.empty(len(ids) + 1, dtype=np.uint16 if tok.n_vocab <= UINT16_VOCAB_LIMIT else np.uint32)
    out[0] = tok.eot_token
    out[1:] = ids
    return out


# The one tokenizer of a worker process, set by the pool's initializer; only ever filled in workers.
_WORKER_TOKENIZER = {}


def _init_worker(tok):
    _WORKER_TOKENIZER["tok"] = tok.load() if isinstance(tok, TokenizerSpec) else tok


def _encode_in_worker(text):
    return encode_document(_WORKER_TOKENIZER["tok"], text)


def encode_documents(docs, tokenizer=None, num_workers=1, chunksize=16):
    """Yield encode_document(...) for each text of the iterable `docs`, in order.

    tokenizer: a loaded tokenizer, a TokenizerSpec, or None for GPT-2. num_workers > 1 tokenizes in a
    process pool (llm.c's multiprocess tokenization); None means all cores. With the "fork" start method
    the workers share the parent's loaded tokenizer; otherwise each builds its own from the spec.
    """
    tokenizer = tokenizer or TokenizerSpec()
    num_workers = num_workers or os.cpu_count() or 1
    methods = multiprocessing.get_all_start_methods()
    forking = "fork" in methods
    if isinstance(tokenizer, TokenizerSpec) and (num_workers <= 1 or forking):
        tokenizer = tokenizer.load()
    if num_workers <= 1:
        for text in docs:
            yield encode_document(tokenizer, text)
        return
    ctx = multiprocessing.get_context("fork" if forking else "spawn")
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        yield from pool.imap(_encode_in_worker, docs, chunksize=chunksize)


# ---------------------------------------------------------------------------------------------------------
# writing shards


def say(verbose, message):
    if verbose:
        print(message, flush=True)


def warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def write_gpt2_tokenizer_file(out_dir, verbose):
    """llm.c's gpt2_tokenizer.bin in out_dir (when absent): what llm.c's C trainers read to print samples."""
    path = Path(out_dir) / GPT2_TOKENIZER_FILE
    if path.exists():
        return path
    from llmpy.formats.tokenizer_file import write_tokenizer
    from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer

    write_tokenizer(path, get_gpt2_tokenizer())
    say(verbose, f"writing llm.c's tokenizer file {path}")
    return path


def write_split(path, tokens, vocab_size, verbose):
    n = write_shard(path, tokens, vocab_size=vocab_size)
    say(verbose, f"writing {n:,} tokens to {path}")
    return n


def write_sharded(doc_tokens, out_dir, name, shard_size=SHARD_SIZE, vocab_size=None, verbose=True, max_shards=None):
    """Stream documents' tokens into `{name}_{split}_{index:06d}.bin` shards of `shard_size` tokens.

    Shard 0 is the val split, the others train (llm.c's fineweb layout). A document that does not fit the
    current shard is split across two; the last shard holds what remains; `max_shards` stops after that
    many full shards. Returns [(path, ntok), ...].
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    written, index, writer = [], 0, None
    bar = tqdm(unit="tokens", unit_scale=True, desc=f"tokenizing {name}", disable=not verbose)
    try:
        for toks in doc_tokens:
            if max_shards is not None and index >= max_shards:
                break
            while len(toks) and (max_shards is None or index < max_shards):
                if writer is None:
                    split = "val" if index == 0 else "train"
                    writer = ShardWriter(out_dir / f"{name}_{split}_{index:06d}.bin", vocab_size=vocab_size)
                    writer.__enter__()
                take = min(len(toks), shard_size - writer.ntok)
                writer.write(toks[:take])
                bar.update(take)
                toks = toks[take:]
                if writer.ntok == shard_size:
                    writer.__exit__(None, None, None)
                    written.append((writer.path, writer.ntok))
                    say(verbose, f"writing {writer.ntok:,} tokens to {writer.path}")
                    writer, index = None, index + 1
        if writer is not None and writer.ntok:
            writer.__exit__(None, None, None)
            written.append((writer.path, writer.ntok))
            say(verbose, f"writing {writer.ntok:,} tokens to {writer.path}")
            writer = None
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, None)
        raise
    finally:
        bar.close()
    return written


def read_done(out_dir):
    """The record of a finished prepro in `out_dir`, or None when it is absent or its shards are gone."""
    marker = Path(out_dir) / MARKER
    if not marker.exists():
        return None
    try:
        info = json.loads(marker.read_text())
        for f, ntok in info["files"].items():
            if read_header(Path(out_dir) / f)[2] != ntok:
                return None
    except (ValueError, KeyError, OSError):
        return None
    return info


def mark_done(out_dir, train_pattern, val_pattern, files, verbose=False, **extra):
    """Record a finished prepro in out_dir/prepro.json, with its tokenizer's fields (llmpy.data.vocab; GPT-2's
    unless extra names another `tokenizer`); GPT-2 data first gets llm.c's gpt2_tokenizer.bin beside it."""
    if "tokenizer" not in extra:
        extra = {**GPT2_RECORD, **extra}
    if extra["tokenizer"] == "gpt2":
        write_gpt2_tokenizer_file(out_dir, verbose)
    info = {"train": train_pattern, "val": val_pattern, "files": {Path(p).name: int(n) for p, n in files}, **extra}
    atomic_write_text(Path(out_dir) / MARKER, json.dumps(info, indent=1))
    return info


def skip_if_done(out_dir, verbose, request=None):
    """(train, val) patterns of a finished prepro in out_dir, else None; an LlmpyError when it used another
    tokenizer than `request` (a llmpy.data.vocab.VocabRequest)."""
    info = read_done(out_dir)
    if info is None:
        return None
    if request is not None:
        request.check_done(info, out_dir)
    if info.get("tokenizer", "gpt2") == "gpt2":
        write_gpt2_tokenizer_file(out_dir, verbose)  # made by an older llmpy without it
    total = sum(info["files"].values())
    say(verbose, f"{out_dir} already holds {total:,} tokens in {len(info['files'])} shards, skipping "
                 f"(delete {Path(out_dir) / MARKER} or pass --force to redo)")
    return str(Path(out_dir) / info["train"]), str(Path(out_dir) / info["val"])


def split_and_write(tokens, out_dir, name, val_tokens, n_vocab, verbose, **extra):
    """Write tokens[:val_tokens] as {name}_val.bin and the rest as {name}_train.bin; record it."""
    if len(tokens) <= val_tokens:
        raise LlmpyError(f"only {len(tokens):,} tokens for {name}: not enough for {val_tokens:,} val tokens "
                         "plus a train split; give more text or a smaller val split")
    val_path, train_path = Path(out_dir) / f"{name}_val.bin", Path(out_dir) / f"{name}_train.bin"
    n_val = write_split(val_path, tokens[:val_tokens], n_vocab, verbose)
    n_train = write_split(train_path, tokens[val_tokens:], n_vocab, verbose)
    mark_done(out_dir, train_path.name, val_path.name, [(val_path, n_val), (train_path, n_train)], verbose,
              **extra)
    return str(train_path), str(val_path)


def tokenizer_for(request, out_dir, training_documents, force, verbose):
    """(TokenizerSpec, its prepro.json fields) for a VocabRequest, its files made in out_dir (llmpy.data.vocab)."""
    model, record = make_tokenizer(request, out_dir, training_documents, force, verbose)
    return (TokenizerSpec() if model is None else TokenizerSpec("sentencepiece", str(model))), record


def prepare_out_dir(name, out_dir, force, request=None):
    """The directory the shards go to, made: out_dir, else default_data_dir(name), or its tok{V}/llama2
    subdirectory for a sentencepiece `request` (llmpy.data.vocab). force removes its prepro.json."""
    given = out_dir is not None
    out_dir = Path(out_dir) if given else default_data_dir(name)
    if request is not None:
        out_dir = request.shard_dir(out_dir, given)
    out_dir.mkdir(parents=True, exist_ok=True)
    if force and (out_dir / MARKER).exists():
        (out_dir / MARKER).unlink()
    return out_dir


# ---------------------------------------------------------------------------------------------------------
# datasets


def default_documents():
    """The offline corpus: the English help texts of `pydoc_data.topics`, one document per topic, sorted."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise LlmpyError("this Python has no pydoc_data module, so the offline default corpus is unavailable; "
                         "use `llmpy prepro tinyshakespeare` or `llmpy prepro text FILE`") from e
    return [topics[k] for k in sorted(topics)]


def prepare_default(out_dir=None, force=False, verbose=True, vocab_size=None, tokenizer=None):
    """Tokenize the offline default corpus into default_val.bin / default_train.bin (no network needed).

    vocab_size / tokenizer: a sentencepiece vocabulary instead of GPT-2's (llmpy.data.vocab), a trained one
    (e.g. 512 tokens: a Llama trains on it offline in minutes) in ~/.cache/llmpy/data/default/tok{V}.
    """
    request = VocabRequest.of(vocab_size, tokenizer)
    out_dir = prepare_out_dir("default", out_dir, force, request)
    done = skip_if_done(out_dir, verbose, request)
    if done:
        return done
    spec, record = tokenizer_for(request, out_dir, default_documents, force, verbose)
    tokens = np.concatenate(list(encode_documents(default_documents(), spec)))
    return split_and_write(tokens, out_dir, "default", DEFAULT_VAL_TOKENS, record["vocab_size"], verbose,
                           source="pydoc_data.topics", **record)


def tinyshakespeare_sections(text):
    """llm.c's documents: blank-line-separated sections, each but the last keeping its trailing blank line."""
    parts = text.split(SECTION_SEP)
    return [p + SECTION_SEP for p in parts[:-1]] + [parts[-1]]


def fetch(url, out_dir, filename, sha256=None, source=None, verbose=True, size=None, validate=None,
          source_mismatch="error"):
    """The raw file of a dataset in `out_dir`: copied from a local `source` if given, else downloaded.

    Downloads are checked as llmpy.data.download does (sizes, sha256, not HTML, `validate`). A `source` gets
    the same content checks; a sha256 mismatch is an error, or only a warning with source_mismatch="warn".
    """
    path = Path(out_dir) / filename
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise LlmpyError(f"{source} does not exist; give the path of the downloaded {filename}")
        try:
            check_not_html(source)
            if validate is not None:
                validate(source)
        except (LlmpyError, UnicodeDecodeError) as e:
            raise LlmpyError(f"{source} is not the expected {filename}: {e}") from e
        if sha256 is not None and (got := sha256_of(source)) != sha256:
            message = f"{source} is not the published {filename} (sha256 {got}, expected {sha256})"
            if source_mismatch != "warn":
                raise LlmpyError(message)
            warn(f"{message}; using it anyway, so the token counts will differ from llm.c's")
        if path.exists() and filecmp.cmp(source, path, shallow=False):
            return path
        with open(source, "rb") as src:
            atomic_write_with(path, lambda f: shutil.copyfileobj(src, f, CHUNK_BYTES))
        say(verbose, f"copied {source} to {path}")
        return path
    if path.exists():
        say(verbose, f"{path} already exists, skipping download")
    return download_file(url, path, sha256=sha256, size=size, validate=validate, progress=verbose, hint=INPUT_HINT)


def prepare_tinyshakespeare(out_dir=None, source=None, url=TINYSHAKESPEARE_URL, force=False, verbose=True,
                            vocab_size=None, tokenizer=None):
    """llm.c's tinyshakespeare: 32,768 val and 305,260 train GPT-2 tokens (tiny_shakespeare_{val,train}.bin).

    source: a local copy of input.txt to use instead of downloading (llm.c's quick start offline); one that
    is not the published file (sha256) is used with a warning.
    vocab_size / tokenizer: a sentencepiece vocabulary instead of GPT-2's (llmpy.data.vocab), trained on all
    the sections, into the tok{V}/ or llama2/ subdirectory (the raw text stays in the dataset's directory).
    The documents are llm.c's sections either way, each after the tokenizer's BOS (GPT-2: EOT), and the
    val split is llm.c's rule for every tokenizer: the first 32,768 tokens (with a 4096-token vocabulary
    about the same leading tenth of the text as GPT-2's; with a smaller vocabulary a smaller part).
    """
    request = VocabRequest.of(vocab_size, tokenizer)
    shard_dir = prepare_out_dir("tinyshakespeare", out_dir, force, request)
    raw_dir = Path(out_dir) if out_dir is not None else default_data_dir("tinyshakespeare")
    done = skip_if_done(shard_dir, verbose, request)
    if done:
        return done
    path = fetch(url, raw_dir, "tiny_shakespeare.txt", TINYSHAKESPEARE_SHA256, source, verbose,
                 size=TINYSHAKESPEARE_BYTES, source_mismatch="warn")
    sections = tinyshakespeare_sections(read_text(path))
    spec, record = tokenizer_for(request, shard_dir, lambda: sections, force, verbose)
    tokens = np.concatenate(list(encode_documents(sections, spec)))
    return split_and_write(tokens, shard_dir, "tiny_shakespeare", TINYSHAKESPEARE_VAL_TOKENS, record["vocab_size"],
                           verbose, **record)


def read_text(path, encoding="utf-8"):
    """The text of a file; undecodable bytes are an LlmpyError naming the file and byte offset."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LlmpyError(f"cannot read {path}: {e}") from e
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise LlmpyError(f"{path} is not valid {encoding} text (byte {e.start}: {data[e.start:e.start + 8]!r}); "
                         "convert it to UTF-8 or pass --encoding") from e
    except LookupError as e:
        raise LlmpyError(f"unknown text encoding {encoding!r} for {path}") from e


DOC_SPLITS = ("file", "paragraph", "line")


def text_documents(files, doc_split="file", encoding="utf-8"):
    """Documents of the user's files: one per file, per blank-line paragraph (llm.c's tinyshakespeare way),
    or per non-empty line (JSONL-like corpora)."""
    if doc_split not in DOC_SPLITS:
        raise LlmpyError(f"unknown document split {doc_split!r}; use one of {', '.join(DOC_SPLITS)}")
    for f in files:
        text = read_text(f, encoding)
        if doc_split == "file":
            yield text
        elif doc_split == "paragraph":
            yield from tinyshakespeare_sections(text)
        else:
            yield from (line for line in text.splitlines() if line.strip())


def prepare_text(files, out_dir=None, name="text", val_fraction=TEXT_VAL_FRACTION, vocab_size=None,
                 doc_split="file", encoding="utf-8", num_workers=1, shard_size=SHARD_SIZE, force=False,
                 verbose=True, tokenizer=None):
    """Your own corpus: {name}_val.bin (the first val_fraction of the tokens) and {name}_train*.bin.

    vocab_size: train a custom sentencepiece BPE vocabulary of V tokens on the files first and tokenize with
    it; out_dir gets tok{V}.model (sentencepiece), tok{V}.bin (llama2.c's tokenizer.bin format, for
    `llmpy run -z`) and tok{V}_llmc.bin (llm.c's tokenizer file). tokenizer: "llama2" or a sentencepiece
    .model to tokenize with (llmpy.data.vocab). Default: GPT-2, with gpt2_tokenizer.bin. Each document
    starts with the tokenizer's BOS (GPT-2: EOT).
    """
    files = [Path(f) for f in files]
    if not files:
        raise LlmpyError("no input files given; pass one or more text files")
    for f in files:
        if not f.is_file():
            raise LlmpyError(f"{f} is not a file; give paths of UTF-8 text files")
    if not 0 < val_fraction < 1:
        raise LlmpyError(f"val fraction {val_fraction} must be between 0 and 1")
    request = VocabRequest.of(vocab_size, tokenizer)
    out_dir = prepare_out_dir(name, out_dir, force, request)
    done = skip_if_done(out_dir, verbose, request)
    if done:
        return done
    spec, record = tokenizer_for(request, out_dir, lambda: text_documents(files, doc_split, encoding), force,
                                 verbose)
    n_vocab = record["vocab_size"]
    tokens = np.concatenate(list(encode_documents(text_documents(files, doc_split, encoding), spec, num_workers)))
    n_val = int(len(tokens) * val_fraction)
    if n_val < 1 or len(tokens) - n_val < 2:
        raise LlmpyError(f"{len(tokens):,} tokens are too few to split into val and train; give more text")
    val_path = out_dir / f"{name}_val.bin"
    files_written = [(val_path, write_split(val_path, tokens[:n_val], n_vocab, verbose))]
    train = tokens[n_val:]
    if len(train) <= shard_size:
        train_path = out_dir / f"{name}_train.bin"
        files_written.append((train_path, write_split(train_path, train, n_vocab, verbose)))
    else:
        for i, start in enumerate(range(0, len(train), shard_size)):
            path = out_dir / f"{name}_train_{i:06d}.bin"
            files_written.append((path, write_split(path, train[start:start + shard_size], n_vocab, verbose)))
    mark_done(out_dir, f"{name}_train*.bin", val_path.name, files_written, verbose, **record)
    return str(out_dir / f"{name}_train*.bin"), str(val_path)
