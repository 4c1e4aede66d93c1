"""`llmpy run MODEL`: llama2.c's ./run (and ./runq for v2 int8 files) in Python.

    llmpy run stories15M.bin -t 0.8 -n 256 -i "One day, Lily met a Shoggoth"
    llmpy run llama2_7b_chat.bin -m chat -y "You are a helpful assistant."
    llmpy run stories15M.bin --batch 8 -i "Once upon a time"

Flags and defaults are run.c's (temperature 1.0, top-p 0.9, 256 steps, seed from the clock when 0,
tokenizer.bin); values run.c would silently replace are errors here. --batch N runs N streams
(N samples of one prompt, or one per -i) sharing every weight read; stream i uses seed + i.
"""

import sys
import time
from pathlib import Path

from llmpy.errors import LlmpyError

DEFAULT_TOKENIZER = "tokenizer.bin"


def add_arguments(parser):
    parser.add_argument("model", help="llama2.c model file (.bin, version 0, 1 or 2)")
    parser.add_argument("-t", dest="temperature", type=float, default=1.0, help="temperature, >= 0 (0 = greedy)")
    parser.add_argument("-p", dest="topp", type=float, default=0.9, help="top-p in [0, 1] (0 or 1 = off)")
    parser.add_argument("-s", dest="seed", type=int, default=0, help="random seed (0 = from the clock)")
    parser.add_argument("-n", dest="steps", type=int, default=256, help="steps to run (0 = seq_len)")
    parser.add_argument("-i", dest="prompt", action="append", help="input prompt (repeat for --batch)")
    parser.add_argument("-z", dest="tokenizer", default=None,
                        help="tokenizer.bin (default: next to the model, else ./tokenizer.bin)")
    parser.add_argument("-m", dest="mode", default="generate", choices=["generate", "chat"], help="mode")
    parser.add_argument("-y", dest="system_prompt", default=None, help="system prompt in chat mode")
    parser.add_argument("--batch", type=int, default=1, help="streams generated at once (generate mode)")


def _tokenizer_path(args):
    if args.tokenizer is not None:
        return Path(args.tokenizer)
    beside = Path(args.model).with_name(DEFAULT_TOKENIZER)
    return beside if beside.exists() else Path(DEFAULT_TOKENIZER)


def run(args):
    from llmpy.llama.chat import chat
    from llmpy.llama.generate import generate, generate_batch
    from llmpy.llama.inference import Transformer, tune_openmp_waiting
    from llmpy.sampler import Sampler
    from llmpy.tokenizers.llama2 import Llama2Tokenizer

    tune_openmp_waiting()
    if args.seed < 0:
        raise LlmpyError(f"-s: the seed must be >= 0 (0 = from the clock), got {args.seed}")
    if args.batch < 1:
        raise LlmpyError(f"--batch must be >= 1, got {args.batch}")
    if args.steps < 0:
        raise LlmpyError(f"-n: steps must be >= 0 (0 = the model's seq_len), got {args.steps}")
    prompts = args.prompt or [""]
    batch = args.batch if args.batch > 1 or len(prompts) == 1 else len(prompts)
    if len(prompts) not in (1, batch):
        raise LlmpyError(f"{len(prompts)} prompts (-i) for --batch {batch}: give one prompt or one per stream")
    if args.mode == "chat" and (batch > 1 or len(prompts) > 1):
        raise LlmpyError("chat mode is one conversation: drop --batch and extra -i prompts")
    seed = args.seed if args.seed > 0 else int(time.time())
    # sampler arguments are checked before the (possibly large) model is loaded
    Sampler(1, args.temperature, args.topp, seed)
    transformer = Transformer.from_file(args.model, n_streams=batch)
    config = transformer.config
    tokenizer = Llama2Tokenizer.load(_tokenizer_path(args), config.vocab_size)
    out = sys.stdout.buffer
    if args.mode == "chat":
        sampler = Sampler(config.vocab_size, args.temperature, args.topp, seed)
        chat(transformer, tokenizer, sampler, args.steps, sys.stdin, out, args.system_prompt, args.prompt and prompts[0])
        return 0
    if batch == 1:
        sampler = Sampler(config.vocab_size, args.temperature, args.topp, seed)
        result = generate(transformer, tokenizer, sampler, prompts[0], args.steps, out=out)
        rate = result.tok_per_s
    else:
        samplers = [Sampler(config.vocab_size, args.temperature, args.topp, seed + i) for i in range(batch)]
        results = generate_batch(transformer, tokenizer, samplers, prompts * (batch // len(prompts)), args.steps)
        for i, r in enumerate(results):
            out.write(f"--- stream {i} ---\n".encode() + r.text + b"\n")
        out.flush()
        rate = results[0].tok_per_s
    if rate > 0:
        print(f"achieved tok/s: {rate:f}", file=sys.stderr)
    return 0
