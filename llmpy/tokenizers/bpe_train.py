"""Custom vocabularies: train a small BPE tokenizer with sentencepiece, as llama2.c's `train_vocab` does.

`train_vocab(documents, vocab_size, out_dir)` writes, for V = vocab_size:
    tok{V}.model, tok{V}.vocab  the sentencepiece model (what the data pipeline tokenizes with) and its list;
    tok{V}.bin                  llama2.c's tokenizer.bin format (llama2.c names it so too), for `llmpy run -z`;
    tok{V}_llmc.bin             llm.c's tokenizer file (llmpy.formats.tokenizer_file), for llm.c-style decoders;
using llama2.c's settings: BPE, byte fallback (every byte is a token, so any text encodes), digits split,
whitespace-only pieces allowed, no normalization, character coverage 1.0. Ids 0, 1, 2 are <unk>, <s>, </s>.
Like llama2.c's, such a model keeps sentencepiece's default remove_extra_whitespaces: it drops leading and
trailing spaces and turns runs of spaces into one (newlines are kept), which run.c's encode of tok{V}.bin
does not do; on text without such spaces the two give the same ids. (Llama 2's own tokenizer.model keeps
every space, so there they agree on all text.)
`llama2c_tokenizer(model)` converts any sentencepiece model (Llama 2's own tokenizer.model too) the way
llama2.c's tokenizer.py does.

`SentencePieceTokenizer(model)` gives such a model the interface of the GPT-2 tokenizer used by the data
pipeline: `encode_ordinary`, `encode`, `decode`, `n_vocab`, `decode_single_token_bytes` and `eot_token`,
which here is BOS (<s>, id 1): llama2.c starts every story with BOS, and the data pipeline puts
`eot_token` before every document.

Needs the `sentencepiece` package (`pip install sentencepiece`, or the `vocab` extra). Not handled: the
Hugging Face `tokenizers` library; reading tokenizer.bin files (see llmpy.tokenizers.llama2).
"""

import os
import shutil
import tempfile
from pathlib import Path

from llmpy.errors import LlmpyError, import_optional
from llmpy.fileio import atomic_write

MODEL_TYPE = "bpe"
UNK_SURFACE = r" \342\201\207 "  # llama2.c's " ⁇ " for unknown pieces, written as sentencepiece expects it
SPACE_MARK = "\u2581"  # sentencepiece's "▁", which stands for a space inside pieces
LLAMA2C_BOS_PIECE = "\n<s>\n"  # how llama2.c's tokenizer.py writes BOS and EOS into tokenizer.bin
LLAMA2C_EOS_PIECE = "\n</s>\n"


def _sentencepiece():
    return import_optional("sentencepiece", "a custom vocabulary", "vocab")


def vocab_paths(out_dir, vocab_size):
    """{"model", "vocab", "llama2c", "llmc"}: the files train_vocab writes into out_dir (module docstring)."""
    out_dir = Path(out_dir)
    return {"model": out_dir / f"tok{vocab_size}.model", "vocab": out_dir / f"tok{vocab_size}.vocab",
            "llama2c": out_dir / f"tok{vocab_size}.bin", "llmc": out_dir / f"tok{vocab_size}_llmc.bin"}


def train_vocab(documents, vocab_size, out_dir, verbose=True):
    """Train a BPE vocabulary of `vocab_size` tokens on the iterable of texts `documents`; returns the .model path.

    The texts are dumped, each stripped and ended by a newline as llama2.c's train_vocab writes its tiny.txt,
    to a scratch directory inside out_dir; sentencepiece trains on its lines there, and the results are
    moved into out_dir atomically; the scratch directory is deleted.
    """
    spm = _sentencepiece()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = vocab_paths(out_dir, vocab_size)
    scratch = Path(tempfile.mkdtemp(dir=out_dir, prefix=".vocab."))
    try:
        dump, prefix = scratch / "corpus.txt", scratch / "tok"
        with open(dump, "w", encoding="utf-8") as f:
            f.writelines(text.strip() + "\n" for text in documents)
        if verbose:
            print(f"training a {vocab_size}-token BPE vocabulary on {os.path.getsize(dump) / 1e6:.2f} MB of text")
        try:
            spm.SentencePieceTrainer.train(
                input=str(dump), model_prefix=str(prefix), model_type=MODEL_TYPE, vocab_size=vocab_size,
                self_test_sample_size=0, input_format="text", character_coverage=1.0,
                num_threads=os.cpu_count() or 1, split_digits=True, allow_whitespace_only_pieces=True,
                byte_fallback=True, unk_surface=UNK_SURFACE, normalization_rule_name="identity",
                minloglevel=0 if verbose else 2,
            )
        except RuntimeError as e:
            raise LlmpyError(f"sentencepiece could not train a {vocab_size}-token vocabulary for {out_dir}: {e}; "
                             "choose a vocabulary size that suits the corpus (at least ~300 with byte fallback, "
                             "and fewer than the corpus has distinct pieces)") from e
        for kind, suffix in (("model", ".model"), ("vocab", ".vocab")):
            atomic_write(paths[kind], [prefix.with_suffix(suffix).read_bytes()])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    from llmpy.formats.tokenizer_file import write_tokenizer

    llama2c_tokenizer(paths["model"]).save(paths["llama2c"])
    write_tokenizer(paths["llmc"], SentencePieceTokenizer(paths["model"]))
    if verbose:
        print(f"wrote {paths['model']}, {paths['llama2c']} (llama2.c's format) and {paths['llmc']} (llm.c's)")
    return paths["model"]


def llama2c_tokenizer(model_path):
    """A sentencepiece model as llama2.c's tokenizer.bin vocabulary (a Llama2Tokenizer; .save() writes it).

    As llama2.c's tokenizer.py: every piece with "▁" turned into " ", BOS and EOS written as "\\n<s>\\n" and
    "\\n</s>\\n", and the sentencepiece score of each piece.
    """
    from llmpy.tokenizers.llama2 import Llama2Tokenizer

    sp = SentencePieceTokenizer(model_path).sp
    pieces, scores = [], []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if i == sp.bos_id():
            piece = LLAMA2C_BOS_PIECE
        elif i == sp.eos_id():
            piece = LLAMA2C_EOS_PIECE
        pieces.append(piece.replace(SPACE_MARK, " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    return Llama2Tokenizer(pieces, scores)


class SentencePieceTokenizer:
    """A trained sentencepiece model behind the GPT-2 tokenizer's interface (see the module docstring)."""

    def __init__(self, model_path):
        spm = _sentencepiece()
        self.path = Path(model_path)
        if not self.path.is_file():
            raise LlmpyError(f"sentencepiece model {self.path} not found; train it with "
                             "`llmpy prepro text FILE --vocab-size N`")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            raise LlmpyError(f"{self.path} is not a sentencepiece model ({e}); give a .model file written by "
                             "sentencepiece (such as Llama 2's tokenizer.model), or train one again") from e
        self.n_vocab = self.sp.vocab_size()
        self.eot_token = self.sp.bos_id()

    def encode_ordinary(self, text):
        return self.sp.encode(text)

    def encode(self, text, allowed_special=()):
        """Like encode_ordinary: sentencepiece reads "<s>" in text as plain characters, never as BOS."""
        return self.sp.encode(text)

    def decode(self, ids):
        return self.sp.decode([int(i) for i in ids])

    def decode_single_token_bytes(self, token_id):
        """The bytes a token stands for: byte pieces <0xAB> are that byte, "▁" is a space."""
        piece = self.sp.id_to_piece(int(token_id))
        if self.sp.is_byte(int(token_id)):
            return bytes([int(piece[3:5], 16)])
        return piece.replace(SPACE_MARK, " ").encode("utf-8")
