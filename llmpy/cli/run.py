"""`llmpy run MODEL`: llama2.c's ./run (and ./runq for v2 int8 files) in Python.

    llmpy run stories15M                                   # fetched once from the Hugging Face hub
    llmpy run stories15M.bin -t 0.8 -n 256 -i "One day, Lily met a Shoggoth"
    llmpy run llama2_7b_chat.bin -m chat -y "You are a helpful assistant."
    llmpy run stories15M.bin --batch 8 -i "Once upon a time"
    llmpy run HuggingFaceTB/SmolLM2-135M-Instruct -m chat        # a Hugging Face Llama: hub id or directory

MODEL is a llama2.c model file, or stories15M | stories42M | stories110M: llama2.c's models, downloaded
from the hub repository karpathy/tinyllamas into the Hugging Face cache (HF_ENDPOINT, HF_HUB_OFFLINE and
HF_HOME apply). The tokenizer is -z, else tokenizer.bin next to the model, else ./tokenizer.bin, else (for
the 32000-token Llama 2 vocabulary) llama2.c's tokenizer.bin, downloaded once and sha256-checked.
MODEL may also be a Hugging Face Llama directory (config.json + safetensors) or a hub id owner/name
(config, tokenizer and safetensors files downloaded into the Hugging Face cache): its tokenizer.json
encodes, -m chat uses its chat template, generation stops at its eos ids (llmpy/llama/hf_load.py); its
context defaults to min(max_position_embeddings, 4096) positions (--context N for more).

Flags and defaults are run.c's (temperature 1.0, top-p 0.9, 256 steps, seed from the clock when 0);
values run.c would silently replace are errors here (when -n is not given, 256 is lowered to seq_len; a Hugging
Face model's -m chat may fill its whole context). A generation
that reaches the end of the context (seq_len, or --context) stops there with a notice on stderr; with
--context-shift it keeps the prompt (at most half the window) and the most recent half of the rest, forwards
them again and goes on (llmpy/llama/generate.py); -m chat likewise, keeping the first turn. --quantize q8
quantizes fp32/bf16/fp16 weights to Q8_0 on load, a tensor at a time; --dtype bf16 keeps them as bf16 (a Hugging
Face checkpoint stored in bf16 or fp16 stays so unless --dtype fp32).
--batch N runs N streams (N samples of one prompt, or one per -i) sharing every weight read; stream i uses
seed + i. Threads: as many as the other processes leave cores free, checked while it runs (llmpy/threads.py), so a busy
laptop is never slower than one thread; --threads N fixes it.
"""

import sys
import time
from pathlib import Path

from llmpy.errors import LlmpyError

DEFAULT_TOKENIZER = "tokenizer.bin"
DEFAULT_STEPS = 256  # run.c's
LLAMA2_VOCAB_SIZE = 32000  # the vocabulary of llama2.c's tokenizer.bin


def add_model_arguments(parser):
    """MODEL and the options that say how it is loaded (load_model): `llmpy run`'s and `llmpy serve`'s."""
    parser.add_argument("model", help="llama2.c model file (.bin, version 0, 1 or 2), stories15M|stories42M|"
                                      "stories110M (downloaded from the hub), or a Hugging Face Llama directory "
                                      "or hub id (owner/name)")
    parser.add_argument("-z", "--tokenizer", default=None,
                        help="tokenizer.bin (default: next to the model, else ./tokenizer.bin, else llama2.c's); for a "
                             "Hugging Face model a directory with tokenizer.json (default: the model's)")
    parser.add_argument("--context", "--ctx", dest="context", type=int, default=None, metavar="N",
                        help="positions of KV cache to allocate (per stream or slot; default: the model's seq_len, "
                             "a Hugging Face model's min(max_position_embeddings, 4096); needed for a header whose "
                             "seq_len is out of proportion to the weights)")
    parser.add_argument("--quantize", choices=["q8"], default=None,
                        help="quantize float weights to Q8_0 (int8) on load, a tensor at a time (group size 64, "
                             "halved until it divides dim and hidden_dim)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                        help="keep float weights as fp32, bf16 or fp16 (half the memory, rounded to nearest even); "
                             "default: a Hugging Face checkpoint's bf16 or fp16 stays so, everything else fp32")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads (default: the cores other processes leave free, checked as it runs; "
                             "NUMBA_NUM_THREADS caps it)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="load NaN/inf weights with a warning")


def model_options(model, **options):
    """The arguments add_model_arguments gives for MODEL alone, with `options` (e.g. dtype="bf16") set: for
    loading a model without a command line (tests, benchmarks)."""
    import argparse

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(["--", str(model)])
    for name, value in options.items():
        if not hasattr(args, name):
            raise TypeError(f"model_options: no model option {name!r}")
        setattr(args, name, value)
    return args


def add_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument("-t", "--temperature", type=float, default=1.0, help="temperature, >= 0 (0 = greedy)")
    parser.add_argument("-p", "--top-p", dest="top_p", type=float, default=0.9,
                        help="top-p in [0, 1] (0 or 1 = off)")
    parser.add_argument("-s", "--seed", type=int, default=0, help="random seed (0 = from the clock)")
    parser.add_argument("-n", "--max-tokens", "--steps", dest="max_tokens", type=int, default=None,
                        help=f"positions to run, prompt included (run.c's steps; 0 = the model's seq_len; "
                             f"default {DEFAULT_STEPS} or seq_len if smaller; -m chat of a Hugging Face model: "
                             "seq_len)")
    parser.add_argument("-i", "--prompt", action="append", help="input prompt (repeat for --batch)")
    parser.add_argument("-m", "--mode", default="generate", choices=["generate", "chat"], help="mode")
    parser.add_argument("-y", "--system-prompt", default=None, help="system prompt in chat mode")
    parser.add_argument("--batch", type=int, default=1, help="streams generated at once (generate mode)")
    parser.add_argument("--context-shift", action="store_true",
                        help="past the context, keep the prompt (or the chat's first turn; at most half the window) "
                             "and the most recent half of the rest, and go on (default: stop with a notice)")


def model_path(spec):
    """A model file, or one of llama2.c's names fetched from the hub (a file of that name wins)."""
    from llmpy.hub import LLAMA2C_MODELS, llama2c_model

    if spec in LLAMA2C_MODELS and not Path(spec).exists():
        return llama2c_model(spec)
    return Path(spec)


def hf_model_dir(spec):
    """The Hugging Face directory MODEL names (a directory, or a hub id fetched into the cache), else None."""
    from llmpy.hub import LLAMA2C_MODELS
    from llmpy.llama.hf_load import hf_snapshot, looks_like_hub_id

    if Path(spec).is_dir():
        return Path(spec)
    if spec not in LLAMA2C_MODELS and looks_like_hub_id(spec):
        return hf_snapshot(spec)
    return None


def load_hf_model(args, model_dir, batch):
    """(Transformer, tokenizer, stop ids) of a Hugging Face Llama directory."""
    from llmpy.llama.hf_load import load_hf
    from llmpy.llama.inference import Transformer
    from llmpy.tokenizers.hf import HFTokenizer

    config, weights = load_hf(model_dir, args.context, args.allow_nonfinite, args.dtype, args.quantize)
    tokenizer = HFTokenizer.load(Path(args.tokenizer) if args.tokenizer else model_dir, config.vocab_size)
    transformer = Transformer(config, weights, n_streams=batch, threads=args.threads)
    # config.json's eos ids (generation_config.json's added) and the tokenizer's eos_token (a chat model's
    # end of turn, e.g. <|im_end|>, is sometimes named only there)
    eos = tokenizer.token_id(tokenizer.special_tokens.get("eos_token"))
    stop_ids = tuple(config.eos_ids) + ((eos,) if eos is not None and eos not in config.eos_ids else ())
    if not stop_ids:
        raise LlmpyError(f"{model_dir}: neither config.json nor the tokenizer names an eos token: generation "
                         "could not stop")
    return transformer, tokenizer, stop_ids


def tokenizer_path(args, model, vocab_size):
    if args.tokenizer is not None:
        return Path(args.tokenizer)
    for candidate in (model.with_name(DEFAULT_TOKENIZER), Path(DEFAULT_TOKENIZER)):
        if candidate.exists():
            return candidate
    if vocab_size == LLAMA2_VOCAB_SIZE:
        from llmpy.hub import llama2c_tokenizer

        return llama2c_tokenizer()
    return Path(DEFAULT_TOKENIZER)  # its load names the missing file and -z


def load_model(args, n_streams):
    """(Transformer with n_streams KV-cache streams, tokenizer, stop ids, Hugging Face directory or None) of
    args.model, loaded as add_model_arguments' options say: `llmpy run`'s and `llmpy serve`'s one loader."""
    from llmpy.llama.inference import Transformer
    from llmpy.llama.model import BOS
    from llmpy.tokenizers.llama2 import Llama2Tokenizer

    if args.threads is not None and args.threads < 1:
        raise LlmpyError(f"--threads must be >= 1, got {args.threads}")
    if args.dtype is not None and args.quantize is not None:
        raise LlmpyError(f"--dtype {args.dtype} and --quantize {args.quantize} ask for two weight types: give one")
    hf_dir = hf_model_dir(args.model)
    if hf_dir is not None:
        return (*load_hf_model(args, hf_dir, n_streams), hf_dir)
    model = model_path(args.model)
    transformer = Transformer.from_file(model, n_streams=n_streams, max_seq_len=args.context,
                                        allow_nonfinite=args.allow_nonfinite, threads=args.threads,
                                        dtype=args.dtype, quantize=args.quantize)
    tokenizer = Llama2Tokenizer.load(tokenizer_path(args, model, transformer.config.vocab_size),
                                     transformer.config.vocab_size)
    return transformer, tokenizer, (BOS,), None


def steps_for(args, seq_len, hf=False):
    """-n as given (checked against seq_len by generate/chat), or run.c's 256 lowered to the model's seq_len
    (not lowered in generate mode with --context-shift, which goes past seq_len); a Hugging Face model's chat
    may fill its whole context."""
    if args.max_tokens is not None:
        return args.max_tokens
    if args.mode == "chat" and hf:
        return seq_len
    return DEFAULT_STEPS if args.context_shift and args.mode == "generate" else min(DEFAULT_STEPS, seq_len)


def run(args):
    from llmpy.llama.chat import chat, chat_with_template
    from llmpy.llama.generate import generate, generate_batch
    from llmpy.llama.inference import tune_openmp_waiting
    from llmpy.llama.template import ChatTemplate
    from llmpy.sampler import Sampler

    tune_openmp_waiting()
    if args.seed < 0:
        raise LlmpyError(f"--seed (-s) must be >= 0 (0 = from the clock), got {args.seed}")
    if args.batch < 1:
        raise LlmpyError(f"--batch must be >= 1, got {args.batch}")
    if args.max_tokens is not None and args.max_tokens < 0:
        raise LlmpyError(f"--max-tokens (-n, run.c's steps) must be >= 0 (0 = the model's seq_len), "
                         f"got {args.max_tokens}")
    prompts = args.prompt or [""]
    batch = args.batch if args.batch > 1 or len(prompts) == 1 else len(prompts)
    if len(prompts) not in (1, batch):
        raise LlmpyError(f"{len(prompts)} prompts (-i) for --batch {batch}: give one prompt or one per stream")
    if args.mode == "chat" and (batch > 1 or len(prompts) > 1):
        raise LlmpyError("chat mode is one conversation: drop --batch and extra -i prompts")
    seed = args.seed if args.seed > 0 else int(time.time())
    # sampler arguments are checked before the (possibly large) model is loaded or downloaded
    Sampler(1, args.temperature, args.top_p, seed)
    transformer, tokenizer, stop_ids, hf_dir = load_model(args, batch)
    config = transformer.config
    steps = steps_for(args, config.seq_len, hf_dir is not None)
    out = sys.stdout.buffer
    if args.mode == "chat":
        sampler = Sampler(config.vocab_size, args.temperature, args.top_p, seed)
        user = args.prompt and prompts[0]
        if hf_dir is None:
            chat(transformer, tokenizer, sampler, steps, sys.stdin, out, args.system_prompt, user, args.context_shift)
            return 0
        if tokenizer.chat_template is None:
            raise LlmpyError(f"{hf_dir}: tokenizer_config.json has no chat_template, so -m chat cannot format "
                             "turns: use -m generate, or a chat (instruct) model")
        template = ChatTemplate(tokenizer.chat_template, tokenizer.special_tokens, f"{hf_dir}/tokenizer_config.json")
        chat_with_template(transformer, tokenizer, template, sampler, steps, sys.stdin, out, args.system_prompt,
                           user, stop_ids, args.context_shift)
        return 0
    if batch == 1:
        sampler = Sampler(config.vocab_size, args.temperature, args.top_p, seed)
        result = generate(transformer, tokenizer, sampler, prompts[0], steps, out=out, stop_ids=stop_ids,
                          context_shift=args.context_shift)
        rate = result.tok_per_s
    else:
        samplers = [Sampler(config.vocab_size, args.temperature, args.top_p, seed + i) for i in range(batch)]
        results = generate_batch(transformer, tokenizer, samplers, prompts * (batch // len(prompts)), steps,
                                 stop_ids, args.context_shift)
        for i, r in enumerate(results):
            out.write(f"--- stream {i} ---\n".encode() + r.text + b"\n")
        out.flush()
        rate = results[0].tok_per_s
    if rate > 0:
        print(f"achieved tok/s: {rate:f}", file=sys.stderr)
    return 0
