"""Text generation loops: run.c's `generate`, and batched generation over many streams at once.

generate: the prompt (with BOS) is forwarded as one batched prefill, then one token at a time;
the printed text and the sampled tokens are those of run.c's loop (prompt pieces, then samples;
stop after `steps` positions or when BOS is sampled). tok/s counts the tokens after the first
forward, as run.c does. Unlike run.c, steps beyond the model's seq_len are not lowered: at the end of the
context the generation stops with a notice on stderr, or with context_shift (llama.cpp's context shift) keeps
the first tokens (the prompt, at most half the window: keep_for) and the most recent half of the rest
(shift_window), forwards those again after the kept ones (whose keys and values stay valid) and goes on.
generate_batch: N streams share every forward call (each weight matrix is read once per step for
all of them), each with its own prompt, KV cache and Sampler.

Tokenizers: llama2.c's tokenizer.bin (llmpy.tokenizers.llama2) or a model's Hugging Face tokenizer
(llmpy.tokenizers.hf); both encode(text, bos, eos), and piece_stream turns either into push(token) -> bytes
to print. stop_ids: the tokens that end a sequence (run.c: BOS; a Hugging Face model: its eos ids).
"""

import sys
import time
from dataclasses import dataclass

from llmpy.errors import LlmpyError
from llmpy.llama.model import BOS
from llmpy.tokenizers.llama2 import safe_piece


@dataclass
class Generation:
    tokens: list  # the prompt tokens (with BOS) followed by the sampled tokens
    n_prompt: int  # how many of tokens are the prompt
    tok_per_s: float  # decode speed: tokens forwarded after the first step / their time
    text: bytes = b""  # what was printed (safe pieces)


class Llama2Pieces:
    """run.c's printing: each token's piece decoded after the previous token, unprintable bytes dropped."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prev = None

    def push(self, token):
        piece = b"" if self.prev is None else safe_piece(self.tokenizer.decode(self.prev, token))
        self.prev = token
        return piece

    def finish(self):
        return b""


def piece_stream(tokenizer):
    """An object whose push(token) returns the bytes to print for it (the first token of a sequence prints
    nothing with llama2.c's tokenizer: it is BOS), and finish() what is left at the end."""
    return tokenizer.stream() if hasattr(tokenizer, "stream") else Llama2Pieces(tokenizer)


def resolve_steps(steps, seq_len, beyond=False):
    """0 means seq_len (run.c's rule); negative is an error, and so is more than seq_len (run.c lowers it silently)
    unless beyond: then generation stops at seq_len with a notice, or shifts the context (generate)."""
    if steps < 0:
        raise LlmpyError(f"steps (-n) must be >= 0 (0 = the model's seq_len {seq_len}), got {steps}")
    if steps > seq_len and not beyond:
        raise LlmpyError(f"steps (-n) {steps} is more than the model's context (seq_len) of {seq_len} tokens: "
                         f"pass -n {seq_len} or less (-n 0 = all {seq_len})")
    return seq_len if steps == 0 else steps


def keep_for(n_first, seq_len):
    """How many tokens a context shift keeps from the start: the first n_first (the prompt, or a chat's first turn
    with its system prompt), at most half the window."""
    return min(n_first, seq_len // 2)


def shift_window(cache, keep, seq_len):
    """The tokens a full window keeps on a context shift: its first `keep` tokens and the most recent half of
    the others (at least one), which are then forwarded again at positions keep, keep + 1, ..."""
    recent = max(1, (seq_len - keep) // 2)
    return cache[:keep] + cache[-recent:]


def context_notice(seq_len, err):
    """The notice a generation that reached the end of the context stops with (err: a text stream)."""
    print(f"[context full: the sequence reached the model's context of {seq_len} tokens (seq_len, or --context); "
          "--context-shift continues past it]", file=err if err is not None else sys.stderr, flush=True)


def encode_prompt(tokenizer, prompt, seq_len):
    tokens = tokenizer.encode(prompt or "", bos=True, eos=False)
    if not tokens:
        raise LlmpyError("the prompt is empty and this tokenizer adds no BOS token, so there is nothing to start "
                         "from: give a prompt (-i TEXT)")
    if len(tokens) > seq_len:
        raise LlmpyError(f"the prompt is {len(tokens)} tokens but the model's context (seq_len) is {seq_len} "
                         "tokens: shorten the prompt")
    return tokens


def generate(transformer, tokenizer, sampler, prompt, steps, out=None, stream=0, stop_ids=(BOS,),
             context_shift=False, err=None):
    """Generate from prompt like run.c; pieces are written to out (a binary file) as they come.

    steps beyond the context (seq_len): at the end of the window, stop with context_notice on err (default
    stderr), or with context_shift keep the first keep_for(prompt) tokens and the most recent half of the rest
    (shift_window), forward those again after the kept ones, and go on."""
    c = transformer.config
    steps = resolve_steps(steps, c.seq_len, beyond=True)
    tokens = encode_prompt(tokenizer, prompt, c.seq_len)
    n_prompt = len(tokens)
    printed = []
    pieces = piece_stream(tokenizer)

    def emit(tok):
        piece = pieces.push(tok)
        printed.append(piece)
        if out is not None and piece:
            out.write(piece)
            out.flush()

    for i in range(min(n_prompt, steps + 1)):  # run.c prints the forced prompt tokens as it goes
        emit(tokens[i])  # nothing for BOS; the first word of a prompt without one
    if n_prompt > steps:  # run.c never gets past the prompt
        transformer.prefill(tokens[:steps], stream=stream, logits="none")
        printed.append(pieces.finish())
        if out is not None:
            out.write(printed[-1])
        return Generation(tokens[:steps + 1], n_prompt, 0.0, b"".join(printed))
    logits = transformer.prefill(tokens, stream=stream)[0]
    cache = list(tokens)  # the tokens whose keys and values the KV cache holds, at positions 0..len(cache)-1
    keep = keep_for(n_prompt, c.seq_len)
    nxt = sampler.sample(logits)
    start, n_timed = time.perf_counter(), 0
    while nxt not in stop_ids:  # run.c: BOS delimits sequences
        emit(nxt)
        tokens.append(nxt)
        if len(tokens) > steps:
            break
        if len(cache) < c.seq_len:
            logits = transformer.forward_token(nxt, len(cache), stream)
            cache.append(nxt)
        elif context_shift:
            cache = shift_window(cache + [nxt], keep, c.seq_len)
            logits = transformer.prefill(cache[keep:], stream=stream, start=keep)[0]
        else:
            context_notice(c.seq_len, err)
            break
        n_timed += 1
        nxt = sampler.sample(logits)
    elapsed = time.perf_counter() - start
    tail = pieces.finish()  # a character still incomplete when generation ended
    printed.append(tail)
    if out is not None:
        out.write(tail + b"\n")
        out.flush()
    return Generation(tokens, n_prompt, n_timed / elapsed if n_timed and elapsed > 0 else 0.0, b"".join(printed))


def generate_batch(transformer, tokenizer, samplers, prompts, steps, stop_ids=(BOS,), context_shift=False, err=None):
    """Generate len(samplers) streams at once; prompts has one prompt per stream. Returns [Generation].
    Past the context, as generate: each stream stops (one notice) or shifts its own window (a prefill of its own)."""
    c = transformer.config
    n = len(samplers)
    assert len(prompts) == n and transformer.n_streams >= n, "one prompt and one KV cache per stream"
    steps = resolve_steps(steps, c.seq_len, beyond=True)
    seqs = [encode_prompt(tokenizer, p, c.seq_len) for p in prompts]
    n_prompt = [len(s) for s in seqs]
    nxt = []
    for s, toks in enumerate(seqs):
        if len(toks) > steps:  # like generate: only the prompt, cut at steps positions
            transformer.prefill(toks[:steps], stream=s, logits="none")
            seqs[s] = toks[:steps + 1]
            nxt.append(stop_ids[0])
        else:
            nxt.append(samplers[s].sample(transformer.prefill(toks, stream=s)[0]))
    caches = [list(s) for s in seqs]  # each stream's KV cache contents, as in generate
    keep = [keep_for(k, c.seq_len) for k in n_prompt]
    active = [s for s in range(n) if nxt[s] not in stop_ids]
    start, n_timed, noticed = time.perf_counter(), 0, False
    while active:
        for s in active:
            seqs[s].append(nxt[s])
        active = [s for s in active if len(seqs[s]) <= steps]
        full = [s for s in active if len(caches[s]) >= c.seq_len]
        if full and not context_shift:
            if not noticed:
                context_notice(c.seq_len, err)
                noticed = True
            active = [s for s in active if s not in full]
        logits = {}
        for s in full if context_shift else ():
            caches[s] = shift_window(caches[s] + [nxt[s]], keep[s], c.seq_len)
            logits[s] = transformer.prefill(caches[s][keep[s]:], stream=s, start=keep[s])[0].copy()
        rows = [s for s in active if s not in logits]
        if rows:
            out = transformer.forward([nxt[s] for s in rows], [len(caches[s]) for s in rows], rows)
            for row, s in enumerate(rows):
                caches[s].append(nxt[s])
                logits[s] = out[row]
        n_timed += len(active)
        still = []
        for s in active:
            nxt[s] = samplers[s].sample(logits[s])
            if nxt[s] not in stop_ids:
                still.append(s)
        active = still
    elapsed = time.perf_counter() - start
    rate = n_timed / elapsed if n_timed and elapsed > 0 else 0.0
    results = []
    for s in range(n):
        pieces = piece_stream(tokenizer)
        text = b"".join(pieces.push(t) for t in seqs[s]) + pieces.finish()
        results.append(Generation(seqs[s], n_prompt[s], rate, text))
    return results
