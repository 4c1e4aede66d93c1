"""llm.c token shards: a 256-int32 header followed by the token ids.

Header (1024 bytes, little-endian int32):
    [0] magic    20240520 (uint16 tokens, GPT-2 sized vocabularies) or 20240801 (uint32 tokens)
    [1] version  1 with magic 20240520, 7 with magic 20240801
    [2] ntok     number of tokens that follow
    [3..255]     zero

Also read here, but only when the caller says so (a headerless file cannot be recognised safely):
    raw_uint16  nanoGPT / llama2.c `.bin`: the uint16 tokens and nothing else
    raw_int32   llm.c's first release: the int32 tokens and nothing else

Writes go to a temporary name in the same directory and are renamed into place, so an interrupted
write never leaves a file that looks complete. Reads are memory-mapped by default, and read_shard checks
what the training code relies on: the header against the size, and for uint32 shards that every id fits
int32 (the dtype of tokens in memory; an id >= 2**31 would wrap negative and slip past a vocab check).

Memory mapping (kept for shards, unlike model files: a training set can be far larger than memory): a
mapped shard truncated or rewritten in place during training kills the process with SIGBUS when a batch
touches the lost pages. Replace shards atomically (write a new file and rename it over the old one, as
llmpy's writers do): a mapping keeps the old file alive and valid. Pass mmap=False to read into memory,
or use ShardReader (reads each slice with os.pread: a truncated shard is an LlmpyError, never SIGBUS),
as llmpy.data.dataloader's DataLoader does.
"""

import os
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_open, atomic_write, read_head
from llmpy.formats import sniff

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAGIC_UINT16 = 20240520  # llm.c's "gpt-2" shards
VERSION_UINT16 = 1
MAGIC_UINT32 = 20240801  # llm.c's "llama-3" shards
VERSION_UINT32 = 7
UINT16_VOCAB_LIMIT = 2**16  # uint16 holds token ids 0..65535
MAX_TOKENS = 2**31 - 1  # the token count is an int32 in the header
MAX_TOKEN_ID = 2**31 - 1  # tokens are int32 in memory
ID_CHECK_CHUNK = 1 << 24  # tokens per max() when checking a uint32 shard's ids
FORMATS = ("llmc", "raw_uint16", "raw_int32")
_FORMAT_DTYPE = {"raw_uint16": np.uint16, "raw_int32": np.int32}
_HEADER_KINDS = {MAGIC_UINT16: (VERSION_UINT16, np.uint16), MAGIC_UINT32: (VERSION_UINT32, np.uint32)}
PREPRO_HINT = "re-run `llmpy prepro` to rewrite it"


def shard_dtype(vocab_size):
    """uint16 when every id of a vocabulary of `vocab_size` tokens fits, else uint32."""
    return np.uint16 if vocab_size <= UINT16_VOCAB_LIMIT else np.uint32


def make_header(ntok, dtype):
    """The 256-int32 header of a shard holding `ntok` tokens stored as `dtype` (uint16 or uint32)."""
    magic, version = (MAGIC_UINT16, VERSION_UINT16) if np.dtype(dtype) == np.uint16 else (MAGIC_UINT32, VERSION_UINT32)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = magic, version, ntok
    return header



def write_shard(path, tokens, vocab_size=None):
    """Write `tokens` (any int sequence or array) as an llm.c shard; returns the number of tokens.

    uint16 (magic 20240520, version 1) unless `vocab_size` exceeds 65,536 or a token id exceeds 65,535,
    then uint32 (magic 20240801, version 7). Negative ids, ids >= vocab_size: LlmpyError.
    """
    toks = np.asarray(tokens)
    if toks.ndim != 1:
        raise LlmpyError(f"tokens for {path} must be 1-D, got shape {toks.shape}")
    if toks.size > MAX_TOKENS:
        raise LlmpyError(f"{toks.size:,} tokens do not fit one shard ({path}); split them into several shards")
    if toks.size and not np.issubdtype(toks.dtype, np.integer):
        raise LlmpyError(f"tokens for {path} must be integers, got {toks.dtype}")
    lo, hi = (int(toks.min()), int(toks.max())) if toks.size else (0, 0)
    if lo < 0:
        raise LlmpyError(f"negative token id {lo} for {path}; token ids must be >= 0")
    if vocab_size is not None and hi >= vocab_size:
        raise LlmpyError(f"token id {hi} >= vocab_size {vocab_size} for {path}; check the tokenizer")
    if hi >= 2**32:
        raise LlmpyError(f"token id {hi} does not fit uint32 for {path}")
    dtype = shard_dtype(max(vocab_size or 0, hi + 1))
    data = toks.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    atomic_write(path, [make_header(toks.size, dtype).tobytes(), data.tobytes()])
    return int(toks.size)


def read_header(path):
    """(magic, version, ntok, dtype) of an llm.c shard, after checking magic, version and file size."""
    path = Path(path)
    sniff.check_kind(path, ("shard",), "an llm.c token shard")
    raw, size = read_head(path, HEADER_BYTES, "token shard")
    if len(raw) < HEADER_BYTES:
        raise LlmpyError(f"{path} is {size} bytes, shorter than the 1024-byte llm.c shard header; "
                         f"it is truncated or not a shard ({PREPRO_HINT}; for a headerless nanoGPT/llama2.c "
                         "file pass raw_uint16)")
    header = np.frombuffer(raw, dtype="<i4")
    magic, version, ntok = int(header[0]), int(header[1]), int(header[2])
    if magic not in _HEADER_KINDS:
        raise LlmpyError(f"bad magic {magic} in {path}: not an llm.c token shard (expected {MAGIC_UINT16} or "
                         f"{MAGIC_UINT32}); {PREPRO_HINT}, or for a headerless file pass raw_uint16 / raw_int32")
    expected_version, dtype = _HEADER_KINDS[magic]
    if version != expected_version:
        raise LlmpyError(f"bad version {version} in {path} (magic {magic} needs version {expected_version}); "
                         f"{PREPRO_HINT}")
    expected_size = HEADER_BYTES + ntok * np.dtype(dtype).itemsize
    if ntok < 0 or size != expected_size:
        raise LlmpyError(f"{path} is {size:,} bytes but its header promises {ntok:,} tokens ({expected_size:,} "
                         f"bytes): the file is truncated or corrupt; {PREPRO_HINT}")
    return magic, version, ntok, dtype


def read_shard(path, mmap=True, fmt="llmc", check_ids=True):
    """The tokens of a shard as a 1-D array (uint16, uint32 or int32), memory-mapped unless mmap=False.

    fmt: "llmc" (the header is required and checked), or "raw_uint16" / "raw_int32" for headerless files.
    check_ids: scan a uint32 shard for ids >= 2**31 now (one pass over the file; ShardReader checks per read).
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise LlmpyError(f"unknown token file format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "llmc":
        _, _, ntok, dtype = read_header(path)
        offset = HEADER_BYTES
    else:
        return _read_raw(path, _FORMAT_DTYPE[fmt], mmap)
    if ntok == 0:
        return np.zeros(0, dtype=dtype)
    dtype = np.dtype(dtype).newbyteorder("<")
    if mmap:
        tokens = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(ntok,))
    else:
        tokens = np.fromfile(path, dtype=dtype, count=ntok, offset=offset)
        if tokens.size != ntok:
            raise LlmpyError(f"{path} changed while it was read; read it again once it is written")
    if dtype.itemsize == 4 and check_ids:
        _check_int32_ids(path, tokens)
    return tokens


def _check_int32_ids(path, tokens, first=0):
    """LlmpyError if a uint32 shard holds an id that int32 cannot hold (it would turn negative in memory)."""
    for start in range(0, tokens.size, ID_CHECK_CHUNK):
        chunk = tokens[start:start + ID_CHECK_CHUNK]
        i = int(chunk.argmax())
        if int(chunk[i]) > MAX_TOKEN_ID:
            raise LlmpyError(f"{path} holds token id {int(chunk[i]):,} at position {first + start + i:,}, beyond any "
                             f"vocabulary (ids are < 2**31): the shard is corrupt; {PREPRO_HINT}")


class ShardReader:
    """A shard's tokens read on demand (os.pread), for a long run: `len(r)` and `r[a:b]` (a new array) as
    with read_shard's memory map, but a shard truncated under a running job gives an LlmpyError at the next
    read instead of SIGBUS. The file stays open, so an atomic replacement does not change what is read.
    uint32 ids are checked per read (no pass over the whole file at open). fmt as read_shard's.
    """

    def __init__(self, path, fmt="llmc"):
        self.path, self.fd = Path(path), None
        if fmt not in FORMATS:
            raise LlmpyError(f"unknown token file format {fmt!r}; use one of {', '.join(FORMATS)}")
        if fmt == "llmc":
            _, _, self.ntok, dtype = read_header(self.path)
            self.offset = HEADER_BYTES
        else:
            dtype = _FORMAT_DTYPE[fmt]
            self.ntok, self.offset = len(_read_raw(self.path, dtype, mmap=True)), 0
        self.dtype = np.dtype(dtype).newbyteorder("<")
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise LlmpyError(f"cannot read token shard {self.path}: {e.strerror or e}") from e

    def __len__(self):
        return self.ntok

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a ShardReader is read in contiguous slices: reader[a:b]")
        start, stop, _ = key.indices(self.ntok)
        n = max(0, stop - start)
        size = self.dtype.itemsize
        data = os.pread(self.fd, n * size, self.offset + start * size) if n else b""
        if len(data) != n * size:
            raise LlmpyError(f"{self.path} is shorter than when it was opened (tokens {start:,}..{stop:,} are gone): "
                             "it was truncated or rewritten in place; replace shards atomically, then restart")
        tokens = np.frombuffer(data, dtype=self.dtype)
        if size == 4 and n:
            _check_int32_ids(self.path, tokens, start)
        return tokens

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.close()


def _read_raw(path, dtype, mmap):
    dtype = np.dtype(dtype).newbyteorder("<")
    if path.is_dir():
        raise LlmpyError(f"{path} is a directory, not a token file: give the file itself")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise LlmpyError(f"cannot read token file {path}: {e}") from e
    if size % dtype.itemsize:
        raise LlmpyError(f"{path} is {size} bytes, not a whole number of {dtype.name} tokens; "
                         "it is truncated or stored in another format")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r")
    return np.fromfile(path, dtype=dtype)


def read_raw_uint16(path, mmap=True):
    """A headerless uint16 token file (nanoGPT's and llama2.c's `.bin`)."""
    return read_shard(path, mmap=mmap, fmt="raw_uint16")


def read_raw_int32(path, mmap=True):
    """A headerless int32 token file (the format of llm.c's first release)."""
    return read_shard(path, mmap=mmap, fmt="raw_int32")


class ShardWriter:
    """Stream tokens into one shard without holding them all: `with ShardWriter(path) as w: w.write(ids)`.

    The tokens go to a temporary file in the same directory behind a placeholder header; on a clean exit
    the header gets the final count and the file is renamed to `path`. On an error the temporary file is
    deleted, so no partial shard is ever left under the final name. `dtype` is uint16 or uint32.
    """

    def __init__(self, path, dtype=np.uint16, vocab_size=None):
        self.path = Path(path)
        self.dtype = np.dtype(shard_dtype(vocab_size) if vocab_size is not None else dtype).newbyteorder("<")
        self.limit = np.iinfo(self.dtype).max + 1 if vocab_size is None else vocab_size
        self.ntok = 0

    def __enter__(self):
        self._atomic = atomic_open(self.path)  # llmpy.fileio's one atomic writer
        self.file = self._atomic.__enter__()
        self.file.write(make_header(0, self.dtype).tobytes())
        return self

    def write(self, tokens):
        toks = np.asarray(tokens)
        if toks.size and (toks.min() < 0 or toks.max() >= self.limit):
            raise LlmpyError(f"token ids {int(toks.min())}..{int(toks.max())} do not fit {self.path} "
                             f"(ids must be in [0, {self.limit})); check the tokenizer / vocab_size")
        if self.ntok + toks.size > MAX_TOKENS:
            raise LlmpyError(f"{self.path} would exceed {MAX_TOKENS:,} tokens; use a smaller shard size")
        self.file.write(toks.astype(self.dtype, copy=False).tobytes())
        self.ntok += int(toks.size)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.file.seek(0)
                self.file.write(make_header(self.ntok, self.dtype).tobytes())
            except BaseException as e:  # the temporary file goes too
                self._atomic.__exit__(type(e), e, e.__traceback__)
                raise
        return self._atomic.__exit__(exc_type, exc, tb)
