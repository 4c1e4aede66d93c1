"""`llmpy prepro NAME`: download and tokenize a dataset into llm.c token shards (llm.c's dev/data/*.py).

Output goes to --out-dir, by default $XDG_CACHE_HOME/llmpy/data/NAME (~/.cache/llmpy/data/NAME);
finished work is skipped unless --force. Prints the token counts, the train/val globs to pass to
`llmpy train`, and the tokenizer files written beside them: gpt2_tokenizer.bin (llm.c's) for GPT-2
datasets; with --vocab-size V (every dataset but hellaswag: a sentencepiece vocabulary trained as llama2.c's
train_vocab, in the tok{V}/ subdirectory) tok{V}.model (sentencepiece), tok{V}.bin (llama2.c's format, for
`llmpy run -z`) and tok{V}_llmc.bin (llm.c's format); with --tokenizer llama2 (Llama 2's, downloaded once)
or --tokenizer PATH.model, in llama2/, tokenizer.model, tokenizer.bin and tokenizer_llmc.bin. See
llmpy.data.vocab.
"""

import os

from llmpy.errors import LlmpyError

RAW_FILES = {  # what --input takes
    "tinyshakespeare": "char-rnn's tinyshakespeare input.txt",
    "tinystories": "TinyStories_all_data.tar.gz",
    "hellaswag": "hellaswag_{split}.jsonl",
}
DATASETS = {
    "default": "offline corpus: the standard library's pydoc_data help texts (no network needed)",
    "tinyshakespeare": "llm.c's tinyshakespeare: 32,768 val and 305,260 train GPT-2 tokens",
    "tinystories": "TinyStories (~1.5 GB download): ~19M val and ~926M train tokens",
    "fineweb": "FineWeb sample-10BT/100BT in 100M-token shards (needs pyarrow)",
    "edu_fineweb": "FineWeb-Edu sample-10BT/100BT in 100M-token shards (needs pyarrow)",
    "hellaswag": "HellaSwag eval file (llm.c's hellaswag_val.bin)",
    "text": "your own text files, GPT-2 tokens or a custom BPE vocabulary (--vocab-size)",
}


VOCAB_DATASETS = ("default", "tinyshakespeare", "tinystories", "fineweb", "edu_fineweb", "text")  # take --vocab-size


def add_arguments(parser):
    parser.epilog = ("Each dataset writes to --out-dir, by default ~/.cache/llmpy/data/NAME "
                     "($XDG_CACHE_HOME/llmpy/data/NAME when XDG_CACHE_HOME is set).")
    sub = parser.add_subparsers(dest="dataset", metavar="NAME", required=True)
    for name, help_text in DATASETS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--out-dir", default=None,
                       help=f"output directory (default: ~/.cache/llmpy/data/{name}, or under $XDG_CACHE_HOME)")
        p.add_argument("--force", action="store_true", help="redo the tokenization even if the output exists")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        if name in ("tinyshakespeare", "tinystories", "hellaswag"):
            p.add_argument("--input", default=None, metavar="FILE",
                           help=f"use this local copy of {RAW_FILES[name]} instead of downloading (offline)")
        if name in ("tinystories", "fineweb", "edu_fineweb", "text"):
            p.add_argument("--workers", type=int, default=None if name != "text" else 1,
                           help="tokenizer processes (default: all cores; text: 1)")
        if name in ("fineweb", "edu_fineweb", "text"):
            p.add_argument("--shard-size", type=int, default=10**8, help="tokens per shard (default 100,000,000)")
        if name in ("fineweb", "edu_fineweb"):
            p.add_argument("--version", default="10B", choices=["10B", "100B"], help="which sample (default 10B)")
            p.add_argument("--max-shards", type=int, default=None, help="stop after this many shards")
        if name == "hellaswag":
            p.add_argument("--split", default="val", choices=["train", "val", "test"], help="default val")
        if name in VOCAB_DATASETS:
            p.add_argument("--vocab-size", type=int, default=None, metavar="V",
                           help="train a sentencepiece BPE vocabulary of V tokens first, as llama2.c's train_vocab, "
                                "and put BOS before every document (default: GPT-2's tokenizer)")
            p.add_argument("--tokenizer", default=None, metavar="gpt2|llama2|PATH",
                           help="tokenize with GPT-2's (default), Llama 2's (llama2: downloaded once from llama2.c's "
                                "repository) or this sentencepiece .model file")
        if name == "text":
            p.add_argument("files", nargs="+", help="UTF-8 text files")
            p.add_argument("--name", default="text", help="shard file prefix (default text)")
            p.add_argument("--val-fraction", type=float, default=0.1, help="leading fraction used as val (0.1)")
            p.add_argument("--doc-split", default="file", choices=["file", "paragraph", "line"],
                           help="what one document is; GPT-2's EOT or sentencepiece's BOS goes before each "
                                "(default file)")
            p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default utf-8)")


def run(args):
    from llmpy.data import prepro
    from llmpy.data.vocab import data_tokenizer

    common = {"out_dir": args.out_dir, "force": args.force, "verbose": not args.quiet}
    name = args.dataset
    if getattr(args, "workers", 1) is not None and getattr(args, "workers", 1) < 1:
        raise LlmpyError(f"--workers {args.workers} must be at least 1")
    if name in VOCAB_DATASETS:
        common.update(vocab_size=args.vocab_size, tokenizer=args.tokenizer)
    if name == "default":
        result = prepro.prepare_default(**common)
    elif name == "tinyshakespeare":
        result = prepro.prepare_tinyshakespeare(source=args.input, **common)
    elif name == "tinystories":
        from llmpy.data.tinystories import prepare_tinystories

        result = prepare_tinystories(source=args.input, num_workers=args.workers, **common)
    elif name in ("fineweb", "edu_fineweb"):
        from llmpy.data.fineweb import prepare_fineweb

        result = prepare_fineweb(version=args.version, edu=name == "edu_fineweb", shard_size=args.shard_size,
                                 max_shards=args.max_shards, num_workers=args.workers, **common)
    elif name == "hellaswag":
        from llmpy.data.hellaswag import prepare_hellaswag

        path = prepare_hellaswag(split=args.split, source=args.input, **common)
        print(f"eval file: {path}")
        return 0
    else:
        result = prepro.prepare_text(args.files, name=args.name, val_fraction=args.val_fraction,
                                     doc_split=args.doc_split, encoding=args.encoding,
                                     num_workers=args.workers, shard_size=args.shard_size, **common)
    train, val = result
    info = prepro.read_done(os.path.dirname(train)) or {"files": {}}
    total = sum(info["files"].values())
    print(f"{total:,} tokens in {len(info['files'])} shards\ntrain: {train}\nval:   {val}")
    tok = data_tokenizer(train)
    if tok is not None:
        for path, what in ((tok.sp_model_path, "sentencepiece"), (tok.llama2c_bin_path, "llama2.c's, for llmpy run -z"),
                           (tok.llmc_bin_path, "llm.c's")):
            if path is not None:
                print(f"tokenizer: {path} ({what})")
    return 0
