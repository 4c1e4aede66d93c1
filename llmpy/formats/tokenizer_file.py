"""llm.c's tokenizer file (`gpt2_tokenizer.bin`): the bytes of every token, enough to decode without BPE.

Layout (what llmc/tokenizer.h reads):
    header: 256 int32 (1024 bytes)
        [0] magic 20240328
        [1] version: 1 = GPT-2 (vocab 50257, EOT 50256 implied), 2 = [2] vocab size and [3] EOT id stored
        [2] vocab_size
        [3] eot_token (version 2 only)
    then for each token id in order: uint8 length (1..255) followed by that many bytes.

Token bytes are not always valid UTF-8 on their own (a multi-byte character can be split over tokens), so
`decode` joins the bytes first and replaces invalid sequences, and `safe_piece` mirrors llm.c's safe_printf
(single control bytes are dropped). Not handled: encoding (that needs the BPE merges, see
llmpy.tokenizers), and scores (llama2.c's tokenizer.bin, see llmpy.tokenizers.llama2).
"""

from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.formats import sniff
from llmpy.formats.tokens import HEADER_BYTES, HEADER_INTS, atomic_write

TOKENIZER_MAGIC = 20240328
VERSION_GPT2 = 1  # vocab 50257 and EOT 50256 are implied
VERSION_WITH_EOT = 2
GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256
MAX_TOKEN_BYTES = 255  # the length is a uint8, and llm.c requires at least one byte
WRITE_HINT = "rewrite it with `llmpy prepro` (or write_tokenizer) from the tokenizer you trained with"


def token_bytes_of(tokenizer, token_id):
    """The bytes of one token from a tiktoken.Encoding or any object with `decode_token` / `id_to_bytes`."""
    for name in ("decode_single_token_bytes", "decode_token", "id_to_bytes"):
        fn = getattr(tokenizer, name, None)
        if fn is not None:
            return bytes(fn(token_id))
    raise TypeError(f"{type(tokenizer).__name__} has no decode_single_token_bytes / decode_token method")


def write_tokenizer(path, tokenizer, version=VERSION_WITH_EOT):
    """Write llm.c's tokenizer file for `tokenizer` (needs n_vocab or vocab_size, eot_token, token bytes).

    version 1 is only valid for GPT-2's own vocabulary (50257 tokens, EOT 50256).
    """
    vocab_size = int(getattr(tokenizer, "n_vocab", None) or tokenizer.vocab_size)
    eot = int(tokenizer.eot_token)
    if version == VERSION_GPT2 and (vocab_size, eot) != (GPT2_VOCAB_SIZE, GPT2_EOT):
        raise LlmpyError(f"tokenizer file version 1 implies GPT-2's vocabulary; use version 2 for {path}")
    if version not in (VERSION_GPT2, VERSION_WITH_EOT):
        raise LlmpyError(f"unknown tokenizer file version {version} for {path}; use 1 or 2")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = TOKENIZER_MAGIC, version, vocab_size
    if version == VERSION_WITH_EOT:
        header[3] = eot
    table = bytearray()
    for i in range(vocab_size):
        b = token_bytes_of(tokenizer, i)
        if not 0 < len(b) <= MAX_TOKEN_BYTES:
            raise LlmpyError(f"token {i} is {len(b)} bytes; llm.c's tokenizer file ({path}) holds 1..255 bytes")
        table.append(len(b))
        table += b
    atomic_write(path, [header.tobytes(), bytes(table)])


class LlmcTokenizer:
    """A decoder built from llm.c's tokenizer file alone (what llmc/tokenizer.h does in C)."""

    def __init__(self, token_table, eot_token, path=None):
        self.token_table = token_table  # list of bytes, one per token id
        self.vocab_size = len(token_table)
        self.n_vocab = self.vocab_size
        self.eot_token = eot_token
        self.path = path

    def decode_token(self, token_id):
        """The raw bytes of one token; LlmpyError for an id outside the vocabulary."""
        if not 0 <= token_id < self.vocab_size:
            raise LlmpyError(f"invalid token id {token_id} for the tokenizer {self.path} "
                             f"(vocab_size {self.vocab_size}); the model and tokenizer file do not match")
        return self.token_table[token_id]

    def decode_bytes(self, ids):
        return b"".join(self.decode_token(int(i)) for i in ids)

    def decode(self, ids):
        """Text of a token sequence; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def safe_piece(self, token_id):
        """One token as printable text, llm.c's safe_printf: a lone control byte prints as nothing."""
        b = self.decode_token(token_id)
        # C's isprint/isspace in the "C" locale: ASCII only, so a lone byte >= 0x80 is dropped too
        if len(b) == 1 and (b[0] >= 0x80 or not (chr(b[0]).isprintable() or chr(b[0]).isspace())):
            return ""
        return b.decode("utf-8", errors="replace")


def read_tokenizer(path):
    """Read llm.c's tokenizer file into an LlmcTokenizer, checking magic, version and every length."""
    path = Path(path)
    sniff.check_kind(path, ("llmc_tokenizer",), "an llm.c tokenizer file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LlmpyError(f"cannot read the tokenizer file {path}: {e.strerror or e}; {WRITE_HINT}") from e
    if len(data) < HEADER_BYTES:
        raise LlmpyError(f"{path} is {len(data)} bytes, shorter than the tokenizer header; {WRITE_HINT}")
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4")
    if int(header[0]) != TOKENIZER_MAGIC:
        raise LlmpyError(f"bad magic {int(header[0])} in {path}: not an llm.c tokenizer file "
                         f"(expected {TOKENIZER_MAGIC}); {WRITE_HINT}")
    version, vocab_size = int(header[1]), int(header[2])
    if version == VERSION_GPT2:
        if vocab_size != GPT2_VOCAB_SIZE:
            raise LlmpyError(f"{path}: version 1 tokenizer files hold GPT-2's {GPT2_VOCAB_SIZE} tokens, "
                             f"this one says {vocab_size}; {WRITE_HINT}")
        eot = GPT2_EOT
    elif version == VERSION_WITH_EOT:
        eot = int(header[3])
    else:
        raise LlmpyError(f"bad version {version} in the tokenizer file {path} (expected 1 or 2); {WRITE_HINT}")
    if not 0 < vocab_size <= len(data) - HEADER_BYTES:  # every token takes at least 2 bytes
        raise LlmpyError(f"{path}: vocab_size {vocab_size} in the header does not fit the file's {len(data)} bytes; "
                         f"{WRITE_HINT}")
    table, pos = [], HEADER_BYTES
    for i in range(vocab_size):
        n = data[pos] if pos < len(data) else 0
        if n == 0 or pos + 1 + n > len(data):
            raise LlmpyError(f"{path} is truncated or corrupt at token {i} of {vocab_size}; {WRITE_HINT}")
        table.append(data[pos + 1:pos + 1 + n])
        pos += 1 + n
    if pos != len(data):
        raise LlmpyError(f"{path} has {len(data) - pos} bytes after its {vocab_size} tokens; {WRITE_HINT}")
    if not 0 <= eot < vocab_size:
        raise LlmpyError(f"{path}: EOT token {eot} outside the vocabulary of {vocab_size}; {WRITE_HINT}")
    return LlmcTokenizer(table, eot, path)
