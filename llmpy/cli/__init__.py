"""The `llmpy` command: one subcommand per module in llmpy/cli/.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int` (the exit status).
Modules are imported only when their subcommand is used, so `llmpy --help` stays fast and a
subcommand's optional dependencies (torch, mpi4py, matplotlib) are needed only by that subcommand.

Flag convention (every subcommand): each option has a long, self-explaining name; short letters are
llama2.c's for generation (-t temperature, -p top-p, -s seed, -n tokens, -i prompt, -z tokenizer) and
llm.c's for `train`; one concept has one long name everywhere (--temperature, --top-p, --top-k, --seed,
--max-tokens, --tokenizer, --output). An unknown flag prints the usage of the subcommand it was given to.

Ordinary mistakes end with one line on stderr and exit status 2, never a traceback: LlmpyError, an output
path that cannot be written (read-only, a file where a directory belongs). A closed stdout (`llmpy run
... | head`) ends the command quietly with status 141, as a C program killed by SIGPIPE would.
"""

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path

from llmpy.errors import LlmpyError

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "train": ("llmpy.cli.train", "train a GPT-2 or a Llama (llm.c's train_gpt2 main loop)"),
    "sample": ("llmpy.cli.sample", "generate text from a GPT-2 checkpoint"),
    "test-gpt2": ("llmpy.cli.test_gpt2", "check the GPT-2 engine against a PyTorch debug state (llm.c's test_gpt2)"),
    "test-llama": ("llmpy.cli.test_llama", "check the Llama engine against a PyTorch debug state (test-gpt2's twin)"),
    "prepro": ("llmpy.cli.prepro", "download and tokenize a dataset into llm.c token shards"),
    "run": ("llmpy.cli.run", "Llama inference: a llama2.c model.bin (run.c / runq.c) or a Hugging Face Llama"),
    "serve": ("llmpy.cli.serve", "OpenAI-compatible HTTP server with continuous batching (Llama models)"),
    "export": ("llmpy.cli.export", "convert model files between llm.c, llama2.c and Hugging Face formats"),
    "plot": ("llmpy.cli.plot", "plot train/val loss curves of one or more runs"),
    "bench": ("llmpy.cli.bench", "benchmarks that print ratios measured in one run"),
}
EXIT_USAGE = 2
EXIT_SIGPIPE = 128 + 13  # what the shell reports for a process killed by SIGPIPE
EXIT_INTERRUPTED = 130
# OSErrors that are the user's to fix (a path), reported as one line instead of a traceback
PATH_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
               errno.ENOENT)


def _module_for(name):
    module_name, _ = SUBCOMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return None
        raise


def check_output(path, overwrite=True, is_dir=False):
    """Raise LlmpyError unless `path` can be written: its nearest existing ancestor is a writable directory, and
    `path` is not a directory (for a file) or a file (for a directory); an existing one only with overwrite."""
    path = Path(path)
    if path.exists():
        if is_dir and not path.is_dir():
            raise LlmpyError(f"{path} is a file, and the output is a directory: choose another name")
        if not is_dir and path.is_dir():
            raise LlmpyError(f"{path} is a directory: give a file name for the output")
        if not overwrite and (not is_dir or any(path.iterdir())):
            raise LlmpyError(f"{path} already exists: choose another name, or pass --overwrite to replace it")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LlmpyError(f"cannot write {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LlmpyError(f"cannot write {path}: the directory {parent} is not writable; choose another place")
    return path


def _quiet_stdout():
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (a test's capture)
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="llmpy", description="LLM training and inference in explicit Python.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # only the chosen subcommand's module is imported; the others are listed by name
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = _module_for(name)
            if module is None:
                parser.exit(EXIT_USAGE, f"llmpy: the '{name}' command is not available in this version\n")
            p.set_defaults(_parser=p)  # a subcommand with its own subcommands may set its deeper parser
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    # parse_known_args: argparse's own parse_args would report an unknown flag with the top-level usage
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a reader that left early shows up here for output still buffered
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_SIGPIPE
    except LlmpyError as e:
        print(f"llmpy {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in PATH_ERRNOS or e.filename is None:
            raise
        print(f"llmpy {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"llmpy {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
