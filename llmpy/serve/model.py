"""The model family objects the serving engine talks to: a llama2.c model and its tokenizer.bin, or a Hugging
Face Llama directory (or hub id) and its tokenizer.json and chat template; both loaded by `llmpy run`'s loader
(llmpy.cli.run.load_model, with its options: --quantize, --dtype, --threads, --context, ...).

The engine (engine.py) and the API (api.py) never look inside a model; they need only:
    name, ctx (positions per slot), n_slots, vocab_size (for the Sampler),
    step_rows (rows per forward: up to SMALL_BATCH a forward is one fused kernel call), prefill_chunk (rows
    per forward of a longer prompt, as Transformer.prefill chunks it),
    max_prompt_bytes (a longer prompt cannot fit in ctx: refused without encoding it),
    encode_prompt(text) / encode_chat(messages) -> token ids (LlmpyError when they do not fit the model),
    completion_stop_ids / chat_stop_ids: sampled tokens that end a reply,
    text_decoder(prompt, chat) -> push(token) -> bytes the token adds to the reply, finish() -> bytes held back,
    forward(tokens, positions, slots) -> logits (one row per distinct slot, in row order).

llama2.c models follow run.c: a completion ends when BOS is sampled (llama2.c's models delimit stories with
BOS, so `llmpy run` stops there), a chat reply when EOS is (run.c's chat loop); chat uses Llama 2's
[INST] <<SYS>> format (llmpy.llama.chat.encode_messages). Hugging Face models stop at their eos ids and
format chats with their own template (llmpy.llama.template), as `llmpy run` does.
"""

from pathlib import Path

from llmpy.errors import LlmpyError
from llmpy.llama.chat import encode_conversation, encode_messages
from llmpy.llama.generate import encode_prompt
from llmpy.llama.inference import SMALL_BATCH
from llmpy.llama.model import BOS, EOS
from llmpy.tokenizers.llama2 import safe_piece


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

    def finish(self):
        return b""


def load_served(model_args, slots):
    """The served model of model_args (add_model_arguments' options), one KV-cache stream per slot."""
    from llmpy.cli.run import load_model

    transformer, tokenizer, stop_ids, hf_dir = load_model(model_args, slots)
    spec = model_args.model
    if hf_dir is not None:
        return HFServed(transformer, tokenizer, str(spec), stop_ids)
    return LlamaServed(transformer, tokenizer, Path(spec).name if Path(spec).exists() else str(spec))


class Served:
    """What both families share: a Transformer with one KV-cache stream per slot."""

    def __init__(self, transformer, tokenizer, name, max_token_bytes):
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.name = name
        self.ctx = transformer.config.seq_len
        self.vocab_size = transformer.config.vocab_size
        self.n_slots = transformer.n_streams
        self.step_rows = max(SMALL_BATCH, self.n_slots)
        self.prefill_chunk = transformer.max_rows  # Transformer.prefill's chunks (`llmpy run`'s)
        self.max_prompt_bytes = self.ctx * max(1, max_token_bytes)  # a token is at most max_token_bytes long

    def encode_prompt(self, text):
        return encode_prompt(self.tokenizer, text, self.ctx)

    def forward(self, tokens, positions, slots):
        return self.transformer.forward(tokens, positions, slots, logits="last")


class LlamaServed(Served):
    """A llama2.c model file and its tokenizer.bin."""

    def __init__(self, transformer, tokenizer, name):
        super().__init__(transformer, tokenizer, name, tokenizer.max_token_length)
        self.completion_stop_ids = frozenset([BOS])
        self.chat_stop_ids = frozenset([EOS])

    def encode_chat(self, messages):
        """Llama 2's template takes an optional system message, then user and assistant alternating, ending
        with the user's."""
        start = 1 if messages[0]["role"] == "system" else 0
        system = messages[0]["content"] if start else ""
        turns = []
        for i, m in enumerate(messages[start:]):
            if m["role"] == "system":
                raise LlmpyError("a system message must come first")
            if (m["role"] == "user") != (i % 2 == 0):
                raise LlmpyError("the Llama 2 chat template alternates user and assistant messages, starting and "
                                 "ending with the user's")
            if m["role"] == "user":
                turns.append((m["content"], None))
            else:
                turns[-1] = (turns[-1][0], m["content"])
        if not turns or turns[-1][1] is not None:
            raise LlmpyError("the last message must be the user's")
        return encode_messages(self.tokenizer, system, turns)

    def text_decoder(self, prompt, chat):
        return PieceDecoder(self.tokenizer, prompt[-1])


class HFServed(Served):
    """A Hugging Face Llama (directory or hub id)."""

    def __init__(self, transformer, tokenizer, name, stop_ids):
        vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
        # a piece's text is at least as long in UTF-8 as the bytes it stands for (byte-level "Ġ", SentencePiece "▁")
        super().__init__(transformer, tokenizer, name, max((len(p.encode()) for p in vocab), default=1))
        self.completion_stop_ids = self.chat_stop_ids = frozenset(stop_ids)
        self.template = None
        if tokenizer.chat_template is not None:
            from llmpy.llama.template import ChatTemplate

            self.template = ChatTemplate(tokenizer.chat_template, tokenizer.special_tokens, tokenizer.where)

    def encode_chat(self, messages):
        if self.template is None:
            raise LlmpyError(f"{self.name} has no chat template (tokenizer_config.json): use /v1/completions")
        return encode_conversation(self.tokenizer, self.template, messages)

    def text_decoder(self, prompt, chat):
        """A completion continues the prompt's text (decoded after it: a leading space stays); a chat reply is
        decoded on its own, as `llmpy run -m chat` and transformers' decode of the new tokens give it."""
        from llmpy.tokenizers.hf import StreamDecoder

        return StreamDecoder(self.tokenizer, True, context=() if chat else prompt)
