"""`llmpy sample MODEL`: generate text from a GPT-2 with a KV cache.

MODEL is an llm.c checkpoint (.bin), a training run directory (its newest complete checkpoint), a Hugging
Face GPT-2 directory (model.safetensors), or OpenAI's gpt2|gpt2-medium|gpt2-large|gpt2-xl.

    llmpy sample runs/default --prompt "The list type" --max-tokens 64 --temperature 0.8 --top-k 40
    llmpy sample gpt2_124M.bin --num-samples 3 --seed 7
    llmpy sample gpt2 -i "The meaning of life is" -n 32 -t 0.8    # OpenAI's GPT-2 124M, fetched once

Short flags are llama2.c's run letters (-i prompt, -n tokens, -t temperature, -p top-p, -s seed,
-z tokenizer); --steps and --max-new-tokens are accepted for --max-tokens.

The prompt is GPT-2 tokenized after <|endoftext|> (what llm.c's training samples start from); models
with another vocabulary take --tokenizer FILE.model (sentencepiece) or print token ids.
"""

import time
from pathlib import Path

from llmpy.errors import LlmpyError
from llmpy.gpt2.model import GPT2_VOCAB_SIZE

U64 = 2**64


def add_arguments(parser):
    parser.add_argument("model", help="checkpoint .bin, run directory, HF directory, or gpt2[-medium|-large|-xl]")
    parser.add_argument("-i", "--prompt", default="", help="text to continue (default: start from <|endoftext|>)")
    parser.add_argument("-n", "--max-tokens", "--steps", "--max-new-tokens", dest="max_tokens", type=int,
                        default=128, help="tokens to generate per sample, after the prompt")
    parser.add_argument("-t", "--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: off)")
    parser.add_argument("-p", "--top-p", type=float, default=1.0, help="nucleus sampling threshold (1: off)")
    parser.add_argument("-s", "--seed", type=int, default=1337, help="seed of the xorshift sampler (as llm.c's)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples generated together as one batch")
    parser.add_argument("-z", "--tokenizer", default=None, help="sentencepiece .model for a custom vocabulary")
    parser.add_argument("--allow-nonfinite", action="store_true", help="load NaN/inf weights with a warning")


def load_model(spec, allow_nonfinite=False):
    """(config, params, description) for any MODEL form the command accepts."""
    from llmpy.formats.llmc import load_checkpoint
    from llmpy.gpt2 import hf
    from llmpy.train import checkpoint as ckpt

    path = Path(spec)
    if spec in hf.HF_REPOS and not path.exists():
        config, params = hf.load_pretrained(spec)
        return config, params, f"OpenAI {spec}"
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            config, params = hf.load_hf_dir(path, allow_nonfinite)
            return config, params, str(path / "model.safetensors")
        step = ckpt.latest_complete(path)
        if step is None:
            raise LlmpyError(f"{path} holds no complete checkpoint (model_*.bin with its DONE_* marker) and no "
                             "model.safetensors; point at a checkpoint file")
        path = ckpt.model_path(path, step)
    if not path.is_file():
        raise LlmpyError(f"{spec}: no such file or directory; give a checkpoint, a run directory or a GPT-2 name")
    config, params = load_checkpoint(path, allow_nonfinite)
    return config, params, str(path)


def make_codec(vocab_size, tokenizer_path):
    """(encode(text) -> ids, decode(ids) -> text, start token)."""
    if tokenizer_path:
        from llmpy.tokenizers.bpe_train import SentencePieceTokenizer
        tok = SentencePieceTokenizer(tokenizer_path)
        return tok.encode_ordinary, tok.decode, tok.eot_token
    if vocab_size == GPT2_VOCAB_SIZE:
        from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer
        tok = get_gpt2_tokenizer()
        return tok.encode_ordinary, tok.decode, tok.eot_token

    def encode(text):
        if text:
            raise LlmpyError(f"this model's vocabulary ({vocab_size} tokens) is not GPT-2's: pass --tokenizer "
                             "FILE.model to use a text prompt")
        return []
    return encode, lambda ids: " ".join(map(str, ids)), 0


def run(args):
    from llmpy.gpt2.generate import generate
    from llmpy.sampler import random_f32

    if args.max_tokens < 1 or args.num_samples < 1:
        raise LlmpyError("--max-tokens (-n) and --num-samples must be >= 1")
    if not args.temperature >= 0 or args.top_k < 0 or not 0.0 < args.top_p <= 1.0:
        raise LlmpyError("need --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1")
    if not 0 < args.seed < U64:
        raise LlmpyError(f"--seed must be a positive 64-bit integer, got {args.seed}")
    config, params, desc = load_model(args.model, args.allow_nonfinite)
    encode, decode, start = make_codec(config.vocab_size, args.tokenizer)
    prompt = [start] + list(encode(args.prompt))
    state = [args.seed]

    def coin():
        c, state[0] = random_f32(state[0])
        return c
    t0 = time.perf_counter()
    seqs = generate(config, params, prompt, args.max_tokens, args.temperature, args.top_k, args.top_p, coin,
                    num_samples=args.num_samples)
    dt = time.perf_counter() - t0
    seqs = [seqs] if args.num_samples == 1 else seqs
    print(f"model: {desc} (L={config.num_layers} C={config.channels} V={config.vocab_size})")
    for seq in seqs:
        print("---")
        print(args.prompt + decode(seq[len(prompt):]))
    print("---")
    print(f"{args.num_samples * args.max_tokens / dt:.1f} tok/s ({args.num_samples} x {args.max_tokens} "
          f"tokens in {dt:.2f} s)")
    return 0
