"""`llmpy bench WHAT`: benchmarks that print ratios measured in one run.

Each benchmark lives in llmpy/bench/WHAT.py with `add_arguments(parser)` and `run(args) -> int`.
"""

import importlib

BENCHMARKS = {
    "train": ("llmpy.bench.train",
              "GPT-2 or Llama (--arch llama) training step vs its matmuls alone, sgemm peak and PyTorch"),
    "tokenize": ("llmpy.bench.tokenize", "tokenizer throughput vs plain tiktoken"),
    "run": ("llmpy.bench.run", "Llama 2 inference tok/s vs the memory-bandwidth limit"),
    "serve": ("llmpy.bench.serve", "llmpy serve under 1-16 streaming clients: tokens/s, latency, vs llmpy run"),
    "dist": ("llmpy.bench.dist", "data-parallel step over MPI ranks vs one process"),
    "quality": ("llmpy.bench.quality",
                "from-scratch tinyshakespeare val loss vs wall time, per-step losses vs PyTorch"),
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_bench_module=module_name, _parser=p)  # an unknown flag prints this benchmark's usage
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        module.add_arguments(p)


def run(args):
    try:
        module = importlib.import_module(args._bench_module)
    except ModuleNotFoundError as e:
        if e.name != args._bench_module:
            raise
        print(f"llmpy bench: the '{args.bench}' benchmark is not available in this version")
        return 2
    return module.run(args)
