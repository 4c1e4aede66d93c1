"""`llmpy export INPUT OUTPUT --to v0|v1|v2|hf`: convert model files.

llama2.c models (.bin v0, v1, v2) convert among the three versions; --to v2 quantizes to Q8_0 in
groups of --group-size values (v2 -> v0/v1 dequantizes). Without --group-size, v2 uses 64 (llama2.c's
default) halved until it divides dim and hidden_dim, as llama2.c's export.py does, and says so.
--to hf writes a Hugging Face Llama directory (config.json + model.safetensors). An llm.c GPT-2
checkpoint (first int32 20240326) is handed to llmpy.gpt2.hf's export.

    llmpy export stories15M.bin stories15M_q80.bin --to v2
    llmpy export stories15M.bin -o stories15M_hf --to hf
    llmpy export SmolLM2-135M/ smollm2.bin --to v0     # a Hugging Face Llama directory -> llama2.c

A Hugging Face Llama directory (config.json + safetensors; llmpy.llama.hf_load) converts to v0, v1 or v2 when
llama2.c can run it: run.c fixes RoPE theta 10000, no RoPE scaling and RMSNorm eps 1e-5, and the file stores
none of them, so any other value is refused rather than written into a file that would run differently.

An existing OUTPUT is replaced only with --overwrite; an output that cannot be written is an error
before anything is converted.
"""

import struct
from pathlib import Path

from llmpy.cli import check_output
from llmpy.errors import LlmpyError
from llmpy.formats.llama2c import DEFAULT_GROUP_SIZE  # llama2.c export.py's 64

GPT2_MAGIC = 20240326  # llm.c model checkpoints start with this int32
TARGETS = ("v0", "v1", "v2", "hf")


def add_arguments(parser):
    parser.add_argument("input", help="model file: llama2.c .bin (v0/v1/v2) or llm.c GPT-2 checkpoint, or a Hugging "
                                      "Face Llama directory")
    parser.add_argument("output", nargs="?", default=None, help="output file (a directory for --to hf)")
    parser.add_argument("-o", "--output", dest="output_flag", default=None, metavar="OUTPUT",
                        help="the output, as a flag instead of the second argument")
    parser.add_argument("--to", required=True, choices=TARGETS, help="output format")
    parser.add_argument("--group-size", type=int, default=None,
                        help=f"Q8_0 group size for --to v2 (default {DEFAULT_GROUP_SIZE}, halved until it divides "
                             "dim and hidden_dim)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def v2_group_size(config, asked=None):
    """(group size, note): `asked` as given, or llama2.c's default halved until it divides dim and hidden_dim."""
    from llmpy.llama.inference import q8_group_size  # the one rule, also run --quantize q8's

    if asked is not None:
        return asked, ""
    group_size = q8_group_size(config)
    if group_size == DEFAULT_GROUP_SIZE:
        return group_size, ""
    return group_size, (f"group size lowered from {DEFAULT_GROUP_SIZE} to {group_size} to divide dim {config.dim} "
                        f"and hidden_dim {config.hidden_dim}")


def _first_int32(path):
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise LlmpyError(f"cannot read {path}: {e.strerror}") from e
    if len(head) < 4:
        raise LlmpyError(f"{path}: {len(head)} bytes is too short to be a model file")
    return struct.unpack("<i", head)[0]


def _output(args):
    if (args.output is None) == (args.output_flag is None):
        raise LlmpyError("give the output once: as the second argument or as -o/--output")
    output = args.output or args.output_flag
    if Path(output).resolve() == Path(args.input).resolve():
        raise LlmpyError(f"{output}: the output would overwrite the input; choose another name")
    check_output(output, overwrite=args.overwrite, is_dir=args.to == "hf")
    return output


def llama2c_compatible(config, where):
    """LlmpyError unless run.c's fixed RoPE and RMSNorm constants are this model's (llama2.c files store neither)."""
    from llmpy.formats.llama2c import ROPE_THETA
    from llmpy.llama.inference import RMS_EPS

    problems = []
    if config.rope_theta != ROPE_THETA:
        problems.append(f"rope_theta {config.rope_theta:g} (run.c uses {ROPE_THETA:g})")
    if config.rope_scaling is not None:
        problems.append(f"{config.rope_scaling['rope_type']} RoPE scaling (run.c has none)")
    if config.norm_eps != RMS_EPS:
        problems.append(f"rms_norm_eps {config.norm_eps:g} (run.c uses {RMS_EPS:g})")
    if problems:
        raise LlmpyError(f"{where}: a llama2.c file cannot store {', '.join(problems)}; the exported model would "
                         "compute something else. Run the directory itself: llmpy run DIR")


def export_hf_dir(args):
    """A Hugging Face Llama directory -> llama2.c v0/v1/v2."""
    from llmpy.formats.llama2c import write_llama2c
    from llmpy.llama.hf_load import load_hf, read_config

    if args.to == "hf":
        raise LlmpyError(f"{args.input} is a Hugging Face directory already: choose --to v0, v1 or v2")
    full = read_config(args.input)
    llama2c_compatible(full, f"{args.input}/config.json")
    args.output = _output(args)
    config, weights = load_hf(args.input, max_seq_len=full.seq_len, dtype="fp32")  # llama2.c files hold fp32
    weights.pop("packed")
    group_size, note = v2_group_size(config, args.group_size) if args.to == "v2" else (None, "")
    if note:
        print(note)
    write_llama2c(args.output, config, weights, int(args.to[1:]), group_size or DEFAULT_GROUP_SIZE)
    print(f"wrote {args.output}: Hugging Face -> {args.to}" + (f" (group size {group_size})" if group_size else "")
          + f", {config}")
    return 0


def run(args):
    if Path(args.input).is_dir():
        return export_hf_dir(args)
    is_gpt2 = _first_int32(args.input) == GPT2_MAGIC
    args.output = _output(args)
    if is_gpt2:
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
    out_group_size, note = v2_group_size(config, args.group_size) if args.to == "v2" else (None, "")
    if note:
        print(note)
    if args.to == "hf":
        from llmpy.llama.hf import write_hf

        write_hf(args.output, config, weights)
    else:
        write_llama2c(args.output, config, weights, int(args.to[1:]), out_group_size or DEFAULT_GROUP_SIZE)
    src = f"v{version}" + (f" (group size {group_size})" if group_size else "")
    dst = args.to + (f" (group size {out_group_size})" if out_group_size else "")
    print(f"wrote {args.output}: {src} -> {dst}, {config}")
    return 0
