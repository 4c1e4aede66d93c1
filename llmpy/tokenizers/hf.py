"""A model's own Hugging Face tokenizer (tokenizer.json), through the `tokenizers` library.

    tok = HFTokenizer.load("SmolLM2-135M-Instruct/", vocab_size=49152)
    ids = tok.encode("Hello", bos=True)     # as AutoTokenizer(text)["input_ids"]: the post-processor's tokens
    stream = tok.stream()                   # decode token by token, never half a UTF-8 character
    text = b"".join(stream.push(t) for t in ids)

tokenizer.json carries the whole pipeline (normalizer, pre-tokenizer, BPE model with byte-level or
byte-fallback pieces, the post-processor that adds BOS, the decoder), so byte-level BPE (SmolLM2, Llama 3)
and SentencePiece-style BPE (TinyLlama, Llama 2) encode and decode exactly as transformers' fast tokenizers.
tokenizer_config.json gives the chat template, the special tokens' text and clean_up_tokenization_spaces
(which transformers applies to BPE models only when forced).
The interface is that of llmpy.tokenizers.llama2.Llama2Tokenizer as generate/chat use it: encode(text, bos,
eos) -> ids, and stream() -> an object whose push(token) returns the bytes that became printable.

transformers (version 5) uses tokenizer.json as it is only for tokenizer_class PreTrainedTokenizerFast (Llama 3);
for LlamaTokenizer (TinyLlama, Llama 2) and GPT2Tokenizer (SmolLM2) it keeps the vocabulary, merges and
post-processor but rebuilds the rest as the class defines it, and tokenizer_config.json's add_bos_token /
add_eos_token rebuild the post-processor: as_transformers_loads does the same to tokenizer.json, so the ids
are AutoTokenizer's:
    LlamaTokenizer: no normalizer; Metaspace("▁", prepend_scheme "first" ("always" with legacy=true, "never"
                    with add_prefix_space=false), split=false); byte-fallback BPE; decoder Replace("▁", " "),
                    ByteFallback, Fuse, Strip one leading space (with add_prefix_space)
    GPT2Tokenizer:  no normalizer; ByteLevel(add_prefix_space) pre-tokenizer and decoder

Streaming (the scheme of Hugging Face's text-generation-inference): the text of the tokens since a recent
offset is decoded twice, without and with the new token; the difference is printed once the decoded text
does not end in U+FFFD (an incomplete UTF-8 sequence), so merged pieces and dropped spaces come out as the
full decode does. With byte-fallback vocabularies a run of <0xXX> tokens is held until it ends (the decoder
turns a whole run that is not valid UTF-8 into U+FFFDs); finish() prints what is still held at the end.
The concatenated stream equals decode_ids(all tokens).

Not handled: SentencePiece .model files without tokenizer.json, slow (Python) tokenizers, tokenizer
options from tokenizer_config.json other than those named above.
"""

import json
import re
from pathlib import Path

from llmpy.errors import LlmpyError

TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' clean_up_tokenization: spaces before punctuation and English contractions
CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _token_text(value):
    """A special token in tokenizer_config.json: a string or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _byte_level(add_prefix_space):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": True}


def as_transformers_loads(spec, config):
    """tokenizer.json's dict as transformers' AutoTokenizer rebuilds it for tokenizer_config.json's class."""
    spec = dict(spec)
    cls = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    model = dict(spec.get("model") or {})
    if cls == "LlamaTokenizer" and model.get("type") == "BPE":
        prefix = config.get("add_prefix_space")
        prefix = True if prefix is None else bool(prefix)
        scheme = ("first" if not config.get("legacy", False) else "always") if prefix else "never"
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": False}
        steps = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
                 {"type": "Fuse"}]
        if prefix:
            steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        spec["decoder"] = {"type": "Sequence", "decoders": steps}
        model.update(fuse_unk=True, byte_fallback=True, dropout=None, unk_token=None)
    elif cls == "GPT2Tokenizer" and model.get("type") == "BPE":
        prefix = bool(config.get("add_prefix_space", False))
        spec["normalizer"] = None
        spec["pre_tokenizer"] = _byte_level(prefix)
        spec["decoder"] = _byte_level(True)
        model.update(fuse_unk=False, dropout=None, continuing_subword_prefix="", end_of_word_suffix="")
    spec["model"] = model
    if "add_bos_token" in config or "add_eos_token" in config or spec.get("post_processor") is None:
        spec["post_processor"] = _template_processing(spec, config)
    return spec


def _template_processing(spec, config):
    """transformers' update_post_processor: "[bos] $A [eos]" as add_bos_token / add_eos_token say."""
    vocab = (spec.get("model") or {}).get("vocab")
    ids = dict(vocab) if isinstance(vocab, dict) else {}
    ids.update({t.get("content"): t.get("id") for t in spec.get("added_tokens") or []})
    special, ends = {}, {}
    for end, key, flag in (("bos", "bos_token", "add_bos_token"), ("eos", "eos_token", "add_eos_token")):
        token = _token_text(config.get(key))
        ends[end] = []
        if config.get(flag, False) and token is not None and ids.get(token) is not None:
            special[token] = {"id": token, "ids": [ids[token]], "tokens": [token]}
            ends[end] = [token]

    def part(seq, type_id):
        return ([{"SpecialToken": {"id": t, "type_id": type_id}} for t in ends["bos"]]
                + [{"Sequence": {"id": seq, "type_id": type_id}}]
                + [{"SpecialToken": {"id": t, "type_id": type_id}} for t in ends["eos"]])

    return {"type": "TemplateProcessing", "single": part("A", 0), "pair": part("A", 0) + part("B", 1),
            "special_tokens": special}


class HFTokenizer:
    def __init__(self, tokenizer, config=None, where="tokenizer", byte_fallback=False):
        """tokenizer: a tokenizers.Tokenizer; config: tokenizer_config.json's dict; byte_fallback: the decoder
        turns <0xXX> tokens into bytes (SentencePiece-style vocabularies)."""
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=False) if byte_fallback else {}
        self.byte_ids = frozenset(i for piece, i in vocab.items() if BYTE_PIECE.fullmatch(piece))
        self.special_ids = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
        self.config = config or {}
        self.where = where
        self.special_tokens = {k: _token_text(self.config.get(k)) for k in SPECIAL_KEYS}
        self.special_tokens = {k: v for k, v in self.special_tokens.items() if v is not None}
        # transformers 5 ignores clean_up_tokenization_spaces for BPE models (it would eat real spaces) unless forced
        forced = self.config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        bpe = type(tokenizer.model).__name__ == "BPE"
        self.cleanup = bool(self.config.get("clean_up_tokenization_spaces", False)) and (not bpe or bool(forced))
        template = self.config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        self.chat_template = template if isinstance(template, str) else None

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def max_id(self):
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)

    def token_id(self, text):
        """Id of a token given by its text (e.g. "<|im_end|>"), or None."""
        return self.tokenizer.token_to_id(text) if text else None

    @classmethod
    def load(cls, model_dir, vocab_size=None):
        """The tokenizer of a Hugging Face model directory; LlmpyError if it is missing or does not fit a model
        with vocab_size embeddings."""
        model_dir = Path(model_dir)
        path = model_dir / TOKENIZER
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise LlmpyError("Hugging Face tokenizers need the tokenizers package: pip install tokenizers "
                             "(or pip install 'llmpy[hf]')") from e
        if not path.is_file():
            raise LlmpyError(f"{path} is missing: llmpy reads a model's tokenizer from tokenizer.json (download it "
                             "with the model, or save it with AutoTokenizer.save_pretrained)")
        from llmpy.llama.hf_load import _read_json

        config_path = model_dir / TOKENIZER_CONFIG
        config = _read_json(config_path, "") if config_path.is_file() else {}
        spec = _read_json(path, "")
        try:
            tokenizer = Tokenizer.from_str(json.dumps(as_transformers_loads(spec, config)))
        except Exception as e:  # the Rust library raises plain Exceptions for malformed files
            raise LlmpyError(f"{path} is not a tokenizers file ({e}): download it again") from e
        decoder = json.dumps(spec.get("decoder"))
        tok = cls(tokenizer, config, str(path), byte_fallback='"ByteFallback"' in decoder)
        if vocab_size is not None and tok.max_id() >= vocab_size:
            raise LlmpyError(f"{path} has token ids up to {tok.max_id()} but the model embeds only {vocab_size} "
                             "tokens (config.json's vocab_size): use the tokenizer that belongs to this model")
        return tok

    def encode(self, text, bos=True, eos=False):
        """Token ids of text; bos: with the tokens the post-processor adds (BOS for Llama), as AutoTokenizer
        encodes by default; eos: followed by the eos token. Special tokens in the text are recognized."""
        ids = self.tokenizer.encode(text, add_special_tokens=bos).ids
        if eos:
            eos_id = self.token_id(self.special_tokens.get("eos_token"))
            if eos_id is None:
                raise LlmpyError(f"{self.where}: the tokenizer has no eos_token to append")
            ids.append(eos_id)
        return ids

    def decode_ids(self, ids, skip_special_tokens=False):
        """Text of ids as AutoTokenizer.decode gives it."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.cleanup:
            for a, b in CLEANUPS:
                text = text.replace(a, b)
        return text

    def stream(self, skip_special_tokens=True):
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Bytes to print as tokens arrive; push(token) -> bytes (b"" while a character is incomplete)."""

    def __init__(self, tokenizer, skip_special_tokens=True, context=()):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids = list(context)  # earlier tokens: decoding in context keeps the spaces the decoder strips first
        self.prefix = self.read = len(self.ids)

    def push(self, token):
        self.ids.append(int(token))
        if int(token) in self.tokenizer.byte_ids or (self.skip and int(token) in self.tokenizer.special_ids):
            return b""  # inside a run of byte tokens (skipped special tokens join runs): known when the run ends
        return self._new_text(final=False)

    def finish(self):
        """What is still held back (an unfinished character or byte run) when the sequence ends."""
        return self._new_text(final=True)

    def _new_text(self, final):
        before = self.tokenizer.decode_ids(self.ids[self.prefix:self.read], self.skip)
        text = self.tokenizer.decode_ids(self.ids[self.prefix:], self.skip)
        if len(text) > len(before) and (final or not text.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before):].encode("utf-8")
        return b""
