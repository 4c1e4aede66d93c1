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
none of them, so any other value is refused rather than written into a file that would run differently. When
the directory has a sentencepiece tokenizer.model (TinyLlama, Llama 2) of the model's vocabulary size, its
llama2.c tokenizer.bin is written beside OUTPUT too (an existing one is kept unless --overwrite), so that
llama2.c's `run OUTPUT` and `llmpy run OUTPUT` find it; byte-level BPE tokenizers (tokenizer.json only:
SmolLM2, Llama 3) have no llama2.c form.

--to tokenizer: llama2.c's tokenizer.bin from a sentencepiece model (llama2.c's `tokenizer.py -t
tokenizer.model`: pieces with "▁" as " ", BOS/EOS as "\n<s>\n" / "\n</s>\n", sentencepiece scores),
INPUT a .model file or a directory holding tokenizer.model:

    llmpy export TinyLlama-1.1B/tokenizer.model tokenizer.bin --to tokenizer

An existing OUTPUT is replaced only with --overwrite; an output that cannot be written is an error
before anything is converted.
"""

import struct
from pathlib import Path

from llmpy.cli import check_output
from llmpy.errors import LlmpyError
from llmpy.formats.llama2c import DEFAULT_GROUP_SIZE  # llama2.c export.py's 64

GPT2_MAGIC = 20240326  # llm.c model checkpoints start with this int32
TARGETS = ("v0", "v1", "v2", "hf", "tokenizer")
SENTENCEPIECE = "tokenizer.model"  # a Hugging Face directory's sentencepiece model (TinyLlama, Llama 2)
LLAMA2C_TOKENIZER = "tokenizer.bin"  # what llama2.c's run (and llmpy run) look for beside a model


def add_arguments(parser):
    parser.add_argument("input", help="model file: llama2.c .bin (v0/v1/v2) or llm.c GPT-2 checkpoint, or a Hugging "
                                      "Face Llama directory")
    parser.add_argument("output", nargs="?", default=None, help="output file (a directory for --to hf)")
    parser.add_argument("-o", "--output", dest="output_flag", default=None, metavar="OUTPUT",
                        help="the output, as a flag instead of the second argument")
    parser.add_argument("--to", required=True, choices=TARGETS,
                        help="output format (tokenizer: llama2.c's tokenizer.bin from a sentencepiece .model)")
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
    if config.q_dim != config.dim:
        problems.append(f"head_dim {config.head_size} (run.c's heads are dim / n_heads = {config.dim} / "
                        f"{config.n_heads})")
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
    _tokenizer_beside(Path(args.input), Path(args.output), config.vocab_size, args.overwrite)
    return 0


def _tokenizer_beside(model_dir, output, vocab_size, overwrite):
    """Write llama2.c's tokenizer.bin of model_dir's tokenizer.model beside the exported model, or say why not."""
    from llmpy.tokenizers.bpe_train import llama2c_tokenizer

    source, target = model_dir / SENTENCEPIECE, output.with_name(LLAMA2C_TOKENIZER)
    if not source.is_file():
        print(f"note: {model_dir} has no {SENTENCEPIECE} (a byte-level BPE tokenizer.json has no llama2.c form): "
              f"llama2.c's run cannot encode text for this model; `llmpy run {model_dir}` can")
        return
    if target.exists() and not overwrite:
        print(f"note: kept the existing {target}; pass --overwrite to replace it with {source}'s")
        return
    tokenizer = llama2c_tokenizer(source)
    if len(tokenizer.vocab) != vocab_size:
        print(f"note: {source} has {len(tokenizer.vocab)} pieces and the model {vocab_size} tokens: no "
              f"{LLAMA2C_TOKENIZER} written (llama2.c reads one piece per token)")
        return
    tokenizer.save(target)
    print(f"wrote {target}: llama2.c's tokenizer of {source}")


def export_tokenizer(args):
    """A sentencepiece model (or a directory's tokenizer.model) -> llama2.c's tokenizer.bin."""
    from llmpy.tokenizers.bpe_train import llama2c_tokenizer

    source = Path(args.input)
    if source.is_dir():
        if not (source / SENTENCEPIECE).is_file():
            raise LlmpyError(f"{source} has no {SENTENCEPIECE}: --to tokenizer converts a sentencepiece model "
                             "(byte-level BPE tokenizers such as SmolLM2's or Llama 3's have no llama2.c form)")
        source = source / SENTENCEPIECE
    args.output = _output(args)
    tokenizer = llama2c_tokenizer(source)  # LlmpyError naming the file if it is not a sentencepiece model
    tokenizer.save(args.output)
    print(f"wrote {args.output}: llama2.c's tokenizer.bin of {source} ({len(tokenizer.vocab)} pieces)")
    return 0


def run(args):
    if args.to == "tokenizer":
        return export_tokenizer(args)
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
