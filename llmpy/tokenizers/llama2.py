"""llama2.c's tokenizer.bin: a SentencePiece-style BPE vocabulary with scores, encoded as run.c does.

File layout: int32 max_token_length, then for each of the model's vocab_size tokens: float32 score,
int32 length, and that many bytes (no terminator). The number of tokens is not stored: it must be
the model's vocab_size, which is why loading takes it.

encode (run.c's `encode`): optional BOS, a dummy-prefix " " token when the text is not empty, the
UTF-8 text split into code points, each looked up in the vocabulary or else spelled as `<0xXX>`
byte tokens (id = byte + 3), then repeatedly the adjacent pair whose concatenation is in the
vocabulary with the highest score is merged (the leftmost on ties), optional EOS.
decode (run.c's `decode`): the token's bytes, without the leading space right after BOS, `<0xXX>`
as the raw byte. `safe_piece` drops single bytes that are neither printable nor whitespace.

Not handled: SentencePiece's .model protobuf files, normalization beyond what run.c does.
"""

import re
import struct
from pathlib import Path

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write
from llmpy.formats import sniff

BOS = 1
EOS = 2
BYTE_FALLBACK_OFFSET = 3  # <0x00> is token 3: ids 0, 1, 2 are <unk>, <s>, </s>
UTF8_MAX_BYTES = 4
NO_SCORE = -1e10  # below every real merge score
BYTE_TOKEN = re.compile(rb"<0x([0-9A-Fa-f]{1,2})")
PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(b" \t\n\v\f\r")  # C isprint or isspace, "C" locale


class Llama2Tokenizer:
    def __init__(self, vocab, scores, max_token_length=None):
        # vocab: list of bytes, scores: list of float, one per token id
        assert len(vocab) == len(scores), "one score per token"
        self.vocab = list(vocab)
        self.scores = [float(s) for s in scores]
        self.max_token_length = max_token_length or max((len(v) for v in self.vocab), default=0)
        self.ids = {}
        for i, piece in enumerate(self.vocab):
            self.ids.setdefault(piece, i)  # first id wins for duplicate pieces

    @property
    def vocab_size(self):
        return len(self.vocab)

    @classmethod
    def load(cls, path, vocab_size):
        """Read tokenizer.bin for a model with vocab_size tokens; LlmpyError if the file does not fit."""
        path = Path(path)
        sniff.check_kind(path, ("llama2c_tokenizer",), "a llama2.c tokenizer.bin (pass the model's tokenizer with -z)")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise LlmpyError(f"cannot read tokenizer {path}: {e.strerror} (pass the right file with -z)") from e
        if len(data) < 4:
            raise LlmpyError(f"{path}: too short to be a llama2.c tokenizer.bin")
        (max_token_length,) = struct.unpack_from("<i", data)
        if max_token_length < 0:
            raise LlmpyError(f"{path}: max_token_length {max_token_length} is negative: not a llama2.c tokenizer.bin")
        pos, vocab, scores = 4, [], []
        for i in range(vocab_size):
            if pos + 8 > len(data):
                raise LlmpyError(f"{path} has only {i} tokens but the model's vocab_size is {vocab_size}: "
                                 "use the tokenizer.bin that belongs to this model (-z)")
            score, n = struct.unpack_from("<fi", data, pos)
            if n < 0 or pos + 8 + n > len(data):
                raise LlmpyError(f"{path}: token {i} has length {n} past the end of the file: the file is corrupt")
            vocab.append(data[pos + 8:pos + 8 + n])
            scores.append(score)
            pos += 8 + n
        if pos != len(data):
            raise LlmpyError(f"{path} has more than {vocab_size} tokens ({len(data) - pos} bytes left over) but the "
                             f"model's vocab_size is {vocab_size}: use the tokenizer.bin that belongs to this model "
                             "(-z)")
        return cls(vocab, scores, max_token_length)

    def save(self, path):
        """Write tokenizer.bin (atomically)."""
        path = Path(path)
        parts = [struct.pack("<i", self.max_token_length)]
        for piece, score in zip(self.vocab, self.scores):
            parts.append(struct.pack("<fi", score, len(piece)) + piece)
        atomic_write(path, parts)

    def _lookup(self, piece):
        return self.ids.get(piece, -1)

    def encode(self, text, bos=True, eos=False):
        """Token ids of text (str or UTF-8 bytes), exactly as run.c's encode."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        tokens = [BOS] if bos else []
        if data:
            space = self._lookup(b" ")
            if space < 0:
                raise LlmpyError("the tokenizer has no ' ' token, which run.c's encode needs as the dummy prefix")
            tokens.append(space)
        # split into UTF-8 code points; unknown ones become their bytes as <0xXX> tokens
        start = 0
        while start < len(data):
            end = start + 1
            while end < len(data) and (data[end] & 0xC0) == 0x80 and end - start < UTF8_MAX_BYTES:
                end += 1
            cp = data[start:end]
            i = self._lookup(cp)
            if i >= 0:
                tokens.append(i)
            else:
                for b in cp:
                    if b + BYTE_FALLBACK_OFFSET >= len(self.vocab):
                        raise LlmpyError(f"byte 0x{b:02X} of the text has no token: this tokenizer's {len(self.vocab)} "
                                         f"tokens end before the byte-fallback token {b + BYTE_FALLBACK_OFFSET}; use "
                                         "the tokenizer.bin that belongs to the model (-z)")
                    tokens.append(b + BYTE_FALLBACK_OFFSET)
            start = end
        # merge the best-scoring adjacent pair until no pair is in the vocabulary
        while True:
            best_score, best_id, best_idx = NO_SCORE, -1, -1
            for i in range(len(tokens) - 1):
                j = self._lookup(self.vocab[tokens[i]] + self.vocab[tokens[i + 1]])
                if j >= 0 and self.scores[j] > best_score:
                    best_score, best_id, best_idx = self.scores[j], j, i
            if best_idx < 0:
                break
            tokens[best_idx:best_idx + 2] = [best_id]
        if eos:
            tokens.append(EOS)
        return tokens

    def decode(self, prev_token, token):
        """Bytes of token as printed after prev_token (run.c's decode)."""
        piece = self.vocab[token]
        if prev_token == BOS and piece.startswith(b" "):
            piece = piece[1:]  # SentencePiece strips the leading space of the first piece after BOS
        m = BYTE_TOKEN.match(piece)
        if m:
            piece = bytes([int(m.group(1), 16)])
        return piece

    def decode_all(self, tokens, prev_token=BOS):
        """Bytes of a token sequence decoded piece by piece, as run.c prints it (without safe printing)."""
        out = []
        for t in tokens:
            out.append(self.decode(prev_token, t))
            prev_token = t
        return b"".join(out)


def safe_piece(piece):
    """run.c's safe_printf: b'' for a lone byte that is neither printable nor whitespace (a raw control byte)."""
    if len(piece) == 1 and piece[0] not in PRINTABLE:
        return b""
    return piece
