"""`llmpy export INPUT OUTPUT --to v0|v1|v2|hf`: convert model files.

llama2.c models (.bin v0, v1, v2) convert among the three versions; --to v2 quantizes to Q8_0 in
groups of --group-size values (v2 -> v0/v1 dequantizes). --to hf writes a Hugging Face Llama
directory (config.json + model.safetensors). An llm.c GPT-2 checkpoint (first int32 20240326) is
handed to llmpy.gpt2.hf's export.

    llmpy export stories15M.bin stories15M_q80.bin --to v2
    llmpy export stories15M.bin stories15M_hf --to hf
"""

import struct
from pathlib import Path

from llmpy.errors import LlmpyError

GPT2_MAGIC = 20240326  # llm.c model checkpoints start with this int32
TARGETS = ("v0", "v1", "v2", "hf")


def add_arguments(parser):
    parser.add_argument("input", help="model file: llama2.c .bin (v0/v1/v2) or llm.c GPT-2 checkpoint")
    parser.add_argument("output", help="output file (a directory for --to hf)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="output format")
    parser.add_argument("--group-size", type=int, default=64, help="Q8_0 group size for --to v2")


def _first_int32(path):
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise LlmpyError(f"cannot read {path}: {e.strerror}") from e
    if len(head) < 4:
        raise LlmpyError(f"{path}: {len(head)} bytes is too short to be a model file")
    return struct.unpack("<i", head)[0]


def run(args):
    if _first_int32(args.input) == GPT2_MAGIC:
        try:
            from llmpy.gpt2.hf import export_cli
        except ModuleNotFoundError as e:
            if e.name not in ("llmpy.gpt2.hf", "llmpy.gpt2"):
                raise
            raise LlmpyError(f"{args.input} is an llm.c GPT-2 checkpoint, and the GPT-2 export is not available "
                             "in this version") from e
        return export_cli(args)
    from llmpy.formats.llama2c import read_llama2c, write_llama2c

    config, weights, version, group_size = read_llama2c(args.input)
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise LlmpyError(f"{args.output}: the output would overwrite the input; choose another name")
    if args.to == "hf":
        from llmpy.llama.hf import write_hf

        write_hf(args.output, config, weights)
    else:
        write_llama2c(args.output, config, weights, int(args.to[1:]), args.group_size)
    src = f"v{version}" + (f" (group size {group_size})" if group_size else "")
    dst = args.to + (f" (group size {args.group_size})" if args.to == "v2" else "")
    print(f"wrote {args.output}: {src} -> {dst}, {config}")
    return 0
