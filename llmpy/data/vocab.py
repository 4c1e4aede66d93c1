"""Which tokenizer a dataset is tokenized with: GPT-2's (llm.c), or a sentencepiece vocabulary (llama2.c).

`llmpy prepro NAME` tokenizes with one of three:
    (default)           GPT-2's tokenizer; an EOT token (50256) before every document; llm.c's
                        gpt2_tokenizer.bin beside the shards.
    --vocab-size V      a sentencepiece BPE vocabulary of V tokens trained on the dataset first, as llama2.c's
                        `tinystories.py train_vocab` (llmpy.tokenizers.bpe_train): tok{V}.model, tok{V}.bin
                        (llama2.c's tokenizer.bin format), tok{V}_llmc.bin (llm.c's) beside the shards.
    --tokenizer llama2  Llama 2's tokenizer.model (32,000 tokens), as llama2.c's `pretokenize` without
                        --vocab_size: downloaded once from llama2.c's repository (sha256-checked) into
                        ~/.cache/llmpy/models/llama2.c/, or `--tokenizer PATH` for a local sentencepiece
                        .model. Copied beside the shards as tokenizer.model (or PATH's name) with
                        tokenizer.bin (byte-identical to the one llama2.c ships) and tokenizer_llmc.bin.
With a sentencepiece vocabulary every document starts with the model's BOS (id 1 for llama2.c's
vocabularies), as llama2.c's pretokenize encodes each story with bos=True, eos=False.

Without --out-dir, GPT-2 shards go to ~/.cache/llmpy/data/NAME and the others to a subdirectory of it:
tok{V}/ or llama2/ (llama2.c's data/tok{V}), so no tokenization replaces another's shards. The
`prepro.json` beside the shards records the tokenizer ("tokenizer", "vocab_size", "bos_id",
"tokenizer_files", "tokenizer_source"); `data_tokenizer(train_pattern)` reads it back for the trainer,
`text_decoder(train_pattern)` gives the matching ids -> text function, and `check_data_fits` names data
of the wrong kind for a model before any work.
"""

import filecmp
import glob
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmpy.data.download import CHUNK_BYTES, sha256_of
from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write_with
from llmpy.formats.tokenizer_file import GPT2_EOT, GPT2_VOCAB_SIZE

GPT2 = "gpt2"
SENTENCEPIECE = "sentencepiece"
LLAMA2 = "llama2"
TRAINED = "trained"  # tokenizer_source of a vocabulary trained by prepro itself
LLAMA2_MODEL_URL = "https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.model"
LLAMA2_MODEL_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
LLAMA2_MODEL_NAME = "tokenizer.model"
GPT2_LLMC_FILE = "gpt2_tokenizer.bin"
MODEL_HINT = "a sentencepiece .model file (such as Llama 2's tokenizer.model)"
GPT2_RECORD = {"tokenizer": GPT2, "vocab_size": GPT2_VOCAB_SIZE, "bos_id": GPT2_EOT, "tokenizer_source": GPT2,
               "tokenizer_files": {"llmc": GPT2_LLMC_FILE}}  # prepro.json's tokenizer fields for GPT-2 data


def llama2_tokenizer_model(url=None, sha256=None, cache_dir=None):
    """Path of Llama 2's tokenizer.model, downloaded once from llama2.c's repository (url, default
    LLAMA2_MODEL_URL) into cache_dir (default ~/.cache/llmpy/models/llama2.c, beside llama2.c's
    tokenizer.bin) and checked against its sha256 (default LLAMA2_MODEL_SHA256)."""
    from llmpy.hub import llama2c_file

    return llama2c_file(LLAMA2_MODEL_NAME, url or LLAMA2_MODEL_URL, sha256 or LLAMA2_MODEL_SHA256, cache_dir,
                        hint=", or pass a local copy with --tokenizer PATH/tokenizer.model")


# ---------------------------------------------------------------------------------------------------------
# what prepro was asked for


@dataclass(frozen=True)
class VocabRequest:
    """The tokenizer asked of `llmpy prepro`: GPT-2's, a trained vocabulary of vocab_size tokens, or a model file.

    model: "llama2" or the path of a sentencepiece .model (None otherwise).
    """

    vocab_size: int | None = None
    model: str | None = None

    def __post_init__(self):
        if self.vocab_size is not None and self.model is not None:
            raise LlmpyError("give either --vocab-size (train a vocabulary) or --tokenizer (use one), not both")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise LlmpyError(f"--vocab-size {self.vocab_size} must be a positive number of tokens")
        if self.model is not None and self.model != LLAMA2 and not Path(self.model).is_file():
            raise LlmpyError(f"--tokenizer {self.model}: no such file; give {MODEL_HINT}, or `llama2` to "
                             "download Llama 2's, or `gpt2`")

    @classmethod
    def of(cls, vocab_size=None, tokenizer=None):
        return cls(vocab_size, None if tokenizer in (None, GPT2) else str(tokenizer))

    @property
    def kind(self):
        return GPT2 if self.vocab_size is None and self.model is None else SENTENCEPIECE

    @property
    def stem(self):
        """The name of the tokenizer files ({stem}.model, {stem}.bin, {stem}_llmc.bin); None for GPT-2."""
        if self.vocab_size is not None:
            return f"tok{self.vocab_size}"
        if self.model == LLAMA2:
            return "tokenizer"
        return Path(self.model).stem if self.model else None

    @property
    def subdir(self):
        """The subdirectory of a dataset's default directory for these shards; None for GPT-2."""
        if self.vocab_size is not None:
            return self.stem
        if self.model is None:
            return None
        if self.model == LLAMA2 or sha256_of(self.model) == LLAMA2_MODEL_SHA256:
            return LLAMA2
        return self.stem

    def source(self):
        """prepro.json's tokenizer_source for shards made this way: "gpt2", "trained", or the sha256 of the
        sentencepiece model tokenized with."""
        if self.model is None:
            return GPT2 if self.vocab_size is None else TRAINED
        return LLAMA2_MODEL_SHA256 if self.model == LLAMA2 else sha256_of(self.model)

    def shard_dir(self, dataset_dir, out_dir_given):
        """Where the shards go: --out-dir itself when given, else the dataset's directory or its subdir."""
        return Path(dataset_dir) if out_dir_given or self.subdir is None else Path(dataset_dir) / self.subdir

    def check_done(self, info, out_dir):
        """LlmpyError when the finished prepro `info` in out_dir used another tokenizer than this request."""
        had = info.get("tokenizer", GPT2)
        had_source = info.get("tokenizer_source", GPT2 if had == GPT2 else TRAINED)
        had_v = info.get("vocab_size") or (GPT2_VOCAB_SIZE if had == GPT2 else None)
        same = had_source == self.source() and (self.vocab_size is None or had_v == self.vocab_size)
        if not same:
            what = "GPT-2's tokenizer" if had == GPT2 else f"a {had_v}-token sentencepiece vocabulary"
            raise LlmpyError(f"{out_dir} already holds shards tokenized with {what} ({had_source}); pass --force "
                             "to replace them, or another --out-dir")


# ---------------------------------------------------------------------------------------------------------
# making the tokenizer files


def _copy_if_changed(src, dst):
    if Path(dst).exists() and filecmp.cmp(src, dst, shallow=False):
        return
    with open(src, "rb") as f:
        atomic_write_with(dst, lambda out: shutil.copyfileobj(f, out, CHUNK_BYTES))


def tokenizer_paths(shard_dir, stem):
    d = Path(shard_dir)
    return {"model": d / f"{stem}.model", "llama2c": d / f"{stem}.bin", "llmc": d / f"{stem}_llmc.bin"}


def make_tokenizer(request, shard_dir, training_documents, force=False, verbose=True):
    """The tokenizer files for `request` in shard_dir; returns (sentencepiece model path or None, record).

    training_documents: a function returning the texts to train a vocabulary on (called only for
    --vocab-size when shard_dir holds no tok{V}.model yet, or with force). record: the tokenizer's fields
    of prepro.json.
    """
    if request.kind == GPT2:
        return None, dict(GPT2_RECORD)
    from llmpy.formats.tokenizer_file import write_tokenizer
    from llmpy.tokenizers.bpe_train import SentencePieceTokenizer, llama2c_tokenizer, train_vocab

    paths = tokenizer_paths(shard_dir, request.stem)
    if request.vocab_size is not None:
        if force or not paths["model"].is_file():
            train_vocab(training_documents(), request.vocab_size, shard_dir, verbose=verbose)
        elif verbose:
            print(f"using the vocabulary already trained in {paths['model']} (pass --force to train it again)")
    else:
        source = llama2_tokenizer_model() if request.model == LLAMA2 else Path(request.model)
        SentencePieceTokenizer(source)  # a file of another kind is named before anything is copied
        _copy_if_changed(source, paths["model"])
    tok = SentencePieceTokenizer(paths["model"])
    if tok.eot_token < 0:
        raise LlmpyError(f"{paths['model']} has no BOS piece, which llama2.c puts before every document; "
                         "use a model trained with one (sentencepiece's default bos_id=1)")
    if request.vocab_size is not None and tok.n_vocab != request.vocab_size:
        raise LlmpyError(f"{paths['model']} has {tok.n_vocab} tokens, not {request.vocab_size}: pass --force to "
                         "train the vocabulary again")
    if force or not paths["llama2c"].is_file():
        llama2c_tokenizer(paths["model"]).save(paths["llama2c"])
    if force or not paths["llmc"].is_file():
        write_tokenizer(paths["llmc"], tok)
    if verbose:
        print(f"tokenizer: {paths['model']} ({tok.n_vocab} tokens, BOS {tok.eot_token})")
    files = {"sentencepiece": paths["model"].name, "llama2c": paths["llama2c"].name, "llmc": paths["llmc"].name}
    return paths["model"], {"tokenizer": SENTENCEPIECE, "vocab_size": tok.n_vocab, "bos_id": tok.eot_token,
                            "tokenizer_source": request.source(), "tokenizer_files": files}


# ---------------------------------------------------------------------------------------------------------
# reading it back: what the trainer calls


@dataclass(frozen=True)
class DataTokenizer:
    """The tokenizer of a prepro'd dataset. kind: "gpt2" or "sentencepiece"; bos_id: the token before every
    document (GPT-2's EOT, 50256, or sentencepiece's BOS); the paths: the tokenizer files beside the shards
    (None when absent)."""

    kind: str
    vocab_size: int
    bos_id: int
    sp_model_path: Path | None = None
    llama2c_bin_path: Path | None = None
    llmc_bin_path: Path | None = None

    def decoder(self):
        """A function token ids -> text for this tokenizer."""
        if self.kind == GPT2:
            from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer

            enc = get_gpt2_tokenizer()
            return lambda ids: enc.decode([int(i) for i in ids])
        if self.sp_model_path is None:
            raise LlmpyError(f"the {self.vocab_size}-token sentencepiece model of this data is missing; "
                             "run its `llmpy prepro` command again")
        from llmpy.tokenizers.bpe_train import SentencePieceTokenizer

        return SentencePieceTokenizer(self.sp_model_path).decode


def _shard_files(train_pattern):
    files = sorted(glob.glob(str(train_pattern)))
    return [Path(f) for f in files] if files else [Path(train_pattern)]


def data_tokenizer(train_pattern):
    """The DataTokenizer of the shards matching train_pattern (a file or a glob), from the prepro.json beside
    them; None when unknown (no prepro.json there, or one that does not list these shards)."""
    from llmpy.data.prepro import read_done

    files = _shard_files(train_pattern)
    folder = files[0].parent
    info = read_done(folder)
    if info is None or not all(f.parent == folder and f.name in info["files"] for f in files):
        return None
    kind = info.get("tokenizer", GPT2)
    if kind == GPT2:
        llmc = folder / GPT2_LLMC_FILE
        return DataTokenizer(GPT2, GPT2_VOCAB_SIZE, GPT2_EOT, llmc_bin_path=llmc if llmc.is_file() else None)
    try:
        vocab_size, bos_id = int(info["vocab_size"]), int(info.get("bos_id", 1))
        names = info.get("tokenizer_files") or {  # written before tokenizer_files was recorded
            "sentencepiece": f"tok{vocab_size}.model", "llama2c": f"tok{vocab_size}.bin",
            "llmc": f"tok{vocab_size}_llmc.bin"}
        paths = {key: folder / str(names[key]) if key in names else None
                 for key in ("sentencepiece", "llama2c", "llmc")}
    except (KeyError, TypeError, ValueError):  # a prepro.json edited by hand: the tokenizer is unknown
        return None
    if kind != SENTENCEPIECE:
        return None
    paths = {key: p if p is not None and p.is_file() else None for key, p in paths.items()}
    return DataTokenizer(SENTENCEPIECE, vocab_size, bos_id, paths["sentencepiece"], paths["llama2c"], paths["llmc"])


def text_decoder(train_pattern):
    """A function token ids -> text for the data of train_pattern, or None when its tokenizer is unknown."""
    tok = data_tokenizer(train_pattern)
    return None if tok is None else tok.decoder()


def check_data_fits(train_pattern, family, vocab_size):
    """LlmpyError, before any training, when the data of train_pattern cannot train this model.

    family: "gpt2" or "llama"; vocab_size: the model's (unpadded) vocabulary. Unknown data passes (the
    DataLoader still checks every id against vocab_size). Returns the DataTokenizer or None.
    """
    tok = data_tokenizer(train_pattern)
    if tok is None:
        return None
    if family == "llama" and tok.kind == GPT2:
        raise LlmpyError(f"{train_pattern} holds GPT-2 tokens but the model is a Llama with a sentencepiece "
                         "vocabulary; prepare Llama data with `llmpy prepro NAME --vocab-size N` or "
                         "`--tokenizer llama2`")
    if family == "gpt2" and tok.kind == SENTENCEPIECE and vocab_size == GPT2_VOCAB_SIZE:
        raise LlmpyError(f"{train_pattern} holds tokens of a {tok.vocab_size}-token sentencepiece vocabulary, "
                         "not GPT-2's; prepare GPT-2 data with `llmpy prepro NAME` (no --vocab-size)")
    if tok.vocab_size > vocab_size:
        gpt2 = " (GPT-2's)" if tok.kind == GPT2 else ""
        raise LlmpyError(f"{train_pattern} was tokenized with a vocabulary of {tok.vocab_size} tokens{gpt2} but the "
                         f"model has {vocab_size}: tokenize the data with the model's tokenizer (llmpy prepro ... "
                         f"--vocab-size {vocab_size}), or train a model of that vocabulary (--vocab-size "
                         f"{tok.vocab_size}; a from-scratch -e takes the data's)")
    return tok
