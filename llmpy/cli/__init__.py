"""The `llmpy` command: one subcommand per module in llmpy/cli/.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int` (the exit status).
Modules are imported only when their subcommand is used, so `llmpy --help` stays fast and a
subcommand's optional dependencies (torch, mpi4py, matplotlib) are needed only by that subcommand.
"""

import argparse
import importlib
import sys

from llmpy.errors import LlmpyError

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "train": ("llmpy.cli.train", "train a GPT-2 (llm.c's train_gpt2 main loop)"),
    "sample": ("llmpy.cli.sample", "generate text from a GPT-2 checkpoint"),
    "test-gpt2": ("llmpy.cli.test_gpt2", "check the engine against a PyTorch debug state (llm.c's test_gpt2)"),
    "prepro": ("llmpy.cli.prepro", "download and tokenize a dataset into llm.c token shards"),
    "run": ("llmpy.cli.run", "Llama 2 inference on a llama2.c model.bin (run.c / runq.c)"),
    "export": ("llmpy.cli.export", "convert model files between llm.c, llama2.c and Hugging Face formats"),
    "plot": ("llmpy.cli.plot", "plot train/val loss curves of one or more runs"),
    "bench": ("llmpy.cli.bench", "benchmarks that print ratios measured in one run"),
}


def _module_for(name):
    module_name, _ = SUBCOMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return None
        raise


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
                parser.exit(2, f"llmpy: the '{name}' command is not available in this version\n")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except LlmpyError as e:
        print(f"llmpy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llmpy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
