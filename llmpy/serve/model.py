"""The model family object the serving engine talks to: a llama2.c model and its tokenizer.

The engine (engine.py) never looks inside a model; it needs only what LlamaServed has:
    name, ctx (positions per slot), n_slots, step_rows (rows per forward that keep one kernel path),
    max_prompt_bytes (a longer prompt is refused without encoding it)
    encode_prompt(text) / encode_chat(system, turns) -> token ids (with BOS)
    completion_stop_ids / chat_stop_ids: sampled tokens that end a reply
    text_decoder(prompt) -> an object whose push(token) gives the bytes that token adds to the reply
    forward(tokens, positions, slots) -> logits (one row per distinct slot, in row order)
    vocab_size (for the Sampler)
A Hugging Face model family would plug in with the same attributes (its chat template from the model's
own files, its own stop ids); nothing else in llmpy/serve/ would change.

Stop tokens follow run.c: a completion ends when BOS is sampled (llama2.c's models delimit stories with
BOS, so `llmpy run` stops there), a chat reply when EOS is sampled (run.c's chat loop).
"""

from pathlib import Path

from llmpy.llama.chat import encode_messages
from llmpy.llama.generate import encode_prompt
from llmpy.llama.inference import SMALL_BATCH, Transformer
from llmpy.llama.model import BOS, EOS
from llmpy.tokenizers.llama2 import Llama2Tokenizer, safe_piece


class PieceDecoder:
    """The bytes each sampled token prints, as `llmpy run` prints them (run.c's decode after the previous token,
    then safe_printf's filter)."""

    def __init__(self, tokenizer, prev):
        self.tokenizer = tokenizer
        self.prev = prev

    def push(self, token):
        piece = safe_piece(self.tokenizer.decode(self.prev, token))
        self.prev = token
        return piece


class LlamaServed:
    """A llama2.c Transformer with one KV-cache stream per slot, and its tokenizer."""

    def __init__(self, transformer, tokenizer, name):
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.name = name
        self.ctx = transformer.config.seq_len
        self.vocab_size = transformer.config.vocab_size
        self.n_slots = transformer.n_streams
        # up to SMALL_BATCH rows a forward is one fused numba call (decode's kernels); prefill chunks fill the rest
        self.step_rows = max(SMALL_BATCH, self.n_slots)
        # a token is at most max_token_length bytes: a longer text cannot fit in the context
        self.max_prompt_bytes = self.ctx * max(1, tokenizer.max_token_length)
        self.completion_stop_ids = frozenset([BOS])
        self.chat_stop_ids = frozenset([EOS])

    @classmethod
    def load(cls, model_spec, tokenizer=None, slots=1, ctx=None):
        """Load like `llmpy run`: a llama2.c file or one of llama2.c's names; the tokenizer found the same way."""
        from argparse import Namespace

        from llmpy.cli.run import model_path, tokenizer_path

        path = model_path(model_spec)
        transformer = Transformer.from_file(path, n_streams=slots, max_seq_len=ctx)
        tok_path = tokenizer_path(Namespace(tokenizer=tokenizer), path, transformer.config.vocab_size)
        tok = Llama2Tokenizer.load(tok_path, transformer.config.vocab_size)
        name = model_spec if not Path(model_spec).exists() else Path(model_spec).name
        return cls(transformer, tok, str(name))

    def encode_prompt(self, text):
        return encode_prompt(self.tokenizer, text, self.ctx)

    def encode_chat(self, system, turns):
        return encode_messages(self.tokenizer, system, turns)

    def text_decoder(self, prompt):
        return PieceDecoder(self.tokenizer, prompt[-1])

    def forward(self, tokens, positions, slots):
        return self.transformer.forward(tokens, positions, slots, logits="last")
