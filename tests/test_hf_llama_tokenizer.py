"""Hugging Face tokenizers and chat templates (llmpy.tokenizers.hf, llmpy.llama.template) against transformers.

The tokenizers are trained here with `tokenizers` in the three shapes Llama-family models ship:
byte-level BPE saved as GPT2Tokenizer (SmolLM2), byte-level BPE with a BOS-adding post-processor saved as
PreTrainedTokenizerFast (Llama 3), and SentencePiece-style byte-fallback BPE saved as LlamaTokenizer
(TinyLlama, Llama 2). Ids, decoded text and rendered chat prompts must equal transformers' AutoTokenizer's.
The chat templates are the models' own (from their tokenizer_config.json).
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from llmpy.errors import LlmpyError
from llmpy.llama.chat import chat_with_template, encode_conversation
from llmpy.llama.template import ChatTemplate
from llmpy.tokenizers.hf import HFTokenizer

TRAIN = ["Once upon a time there was a little girl named Lily. She liked to play outside with her dog.",
         "Hello world, this is a test of the tokenizer. Numbers 123 and 4567.",
         "The quick brown fox jumps over the lazy dog!", "You are a helpful assistant. What is 2+2?",
         "naïve café, Übergröße; 東京 and 🙂 don't I'm we'll"] * 20
CORPUS = ["Hello world", " leading space", "two  spaces\tand\ttabs\n\nnew lines\r\n", "trailing   ",
          "naïve café Übergröße 東京タワー 🙂👍🏽 e\u0301", "don't stop, I'm here ; ok ?", "x" * 40, "",
          "<|im_start|>user\nHi<|im_end|>", "<s>inside</s> text </s>", "<|begin_of_text|>a<|eot_id|>b",
          "digits 3.14159 and 1,000,000", "   ", "\n", "Ωmega ÿ \x00 \x7f"]

SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                    "{% endif %}")
ZEPHYR_TEMPLATE = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
                   "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + "
                   "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'"
                   "  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
                   "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
LLAMA2_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message"
                   " = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = "
                   "false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != "
                   "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/"
                   "user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set "
                   "content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
                   "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token "
                   "+ '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + "
                   "content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

SMOLLM2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def byte_level(special, vocab_size=400):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN, trainer)
    return tok


def sentencepiece_style(vocab_size=200):
    """Byte-fallback BPE with <unk> <s> </s> then <0x00>..<0xFF> as ids 0..258, as Llama 2's vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.train_from_iterator(TRAIN, trainers.BpeTrainer(vocab_size=vocab_size))
    spec = json.loads(tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for piece, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    return llama2_pipeline(vocab, merges)


def llama2_pipeline(vocab, merges):
    """A `tokenizers` Tokenizer of a byte-fallback BPE vocabulary with Llama 2's pipeline (as transformers'
    converter builds it from a tokenizer.model): "▁" for spaces and one before the text, <s> first."""
    sp = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    sp.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    sp.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", 1)])
    return sp


def save_tokenizer(path, family):
    """Write tokenizer.json + tokenizer_config.json of one family into path; returns path."""
    path.mkdir(parents=True, exist_ok=True)
    if family == "smollm2":
        tok = byte_level(SMOLLM2_SPECIAL)
        config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                  "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>", "add_prefix_space": False,
                  "clean_up_tokenization_spaces": False, "chat_template": SMOLLM2_TEMPLATE}
    elif family == "llama3":
        tok = byte_level(LLAMA3_SPECIAL)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                  "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True, "chat_template": LLAMA3_TEMPLATE}
    else:  # tinyllama (zephyr template) or llama2 ([INST] template): the Llama 2 vocabulary's shape
        tok = sentencepiece_style()
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": {"content": "<s>", "__type": "AddedToken"},
                  "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
                  "legacy": False, "clean_up_tokenization_spaces": False,
                  "chat_template": ZEPHYR_TEMPLATE if family == "tinyllama" else LLAMA2_TEMPLATE}
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


FAMILIES = ("smollm2", "llama3", "tinyllama", "llama2")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    path = save_tokenizer(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, HFTokenizer.load(path), transformers.AutoTokenizer.from_pretrained(path)


def test_encode_decode_equal_autotokenizer(family):
    _, mine, theirs = family
    for text in CORPUS:
        for bos in (True, False):
            want = theirs(text, add_special_tokens=bos)["input_ids"]
            assert mine.encode(text, bos=bos) == want, (text, bos)
            for skip in (False, True):
                assert mine.decode_ids(want, skip) == theirs.decode(want, skip_special_tokens=skip), (text, skip)


def test_stream_decode_never_splits_a_character(family):
    _, mine, theirs = family
    for text in CORPUS:
        ids = theirs(text)["input_ids"]
        stream = mine.stream()
        pieces = [stream.push(t) for t in ids] + [stream.finish()]
        for piece in pieces:
            piece.decode("utf-8")  # each piece is whole characters
        assert b"".join(pieces).decode() == theirs.decode(ids, skip_special_tokens=True), text
    # what a random model samples: byte tokens that are not UTF-8, pieces in any order
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = [int(t) for t in rng.integers(0, mine.vocab_size, 12)]
        stream = mine.stream()
        got = b"".join([stream.push(t) for t in ids] + [stream.finish()])
        assert got.decode() == theirs.decode(ids, skip_special_tokens=True), ids


def conversation(turns=2):
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: what's 東京? 🙂"})
        messages.append({"role": "assistant", "content": f"Answer {i}, naïvely."})
    return messages


def apply_chat_template(theirs, messages, tokenize):
    out = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize)
    return out["input_ids"] if tokenize and not isinstance(out, list) else out


def test_chat_template_prompts_equal_apply_chat_template(family):
    _name, mine, theirs = family
    template = ChatTemplate(mine.chat_template, mine.special_tokens)
    for messages in (conversation(2)[:-1], conversation(1)[1:-1]):  # two turns with a system prompt; one without
        assert template.render(messages) == apply_chat_template(theirs, messages, tokenize=False)
        assert encode_conversation(mine, template, messages) == apply_chat_template(theirs, messages, tokenize=True)


def test_template_errors_are_llmpy_errors(tmp_path):
    mine = HFTokenizer.load(save_tokenizer(tmp_path, "llama2"))  # Llama 2's template checks the order of roles
    template = ChatTemplate(mine.chat_template, mine.special_tokens, "tokenizer_config.json")
    with pytest.raises(LlmpyError, match="tokenizer_config.json: .*Conversation roles must alternate"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(LlmpyError, match="does not compile"):
        ChatTemplate("{% for %}", {})


def test_sandbox_refuses_attribute_escapes():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", {})
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        template.render([])


def test_vocabulary_larger_than_the_model(tmp_path):
    save_tokenizer(tmp_path, "smollm2")
    n = HFTokenizer.load(tmp_path).vocab_size
    with pytest.raises(LlmpyError, match=f"tokenizer.json has token ids up to {n - 1} but the model embeds only 100"):
        HFTokenizer.load(tmp_path, vocab_size=100)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(LlmpyError, match="tokenizer.json is missing"):
        HFTokenizer.load(tmp_path)


# -----------------------------------------------------------------------------
# generation and chat with a tiny model and these tokenizers


def model_dir(tmp_path, family, **overrides):
    from test_hf_llama import make_checkpoint

    save_tokenizer(tmp_path, family)
    n = HFTokenizer.load(tmp_path).vocab_size
    tok = json.loads((tmp_path / "tokenizer_config.json").read_text())
    eos = HFTokenizer.load(tmp_path).token_id(tok["eos_token"])
    model = make_checkpoint(tmp_path, vocab_size=n, eos_token_id=eos, **overrides)
    return model, eos


@pytest.mark.parametrize("overrides", [{}, {"head_dim": 16}])  # head_dim: queries 64 wide over 32 channels
def test_run_generates_what_transformers_greedy_gives(tmp_path, capsysbinary, overrides):
    import torch

    from llmpy.cli import main

    model, eos = model_dir(tmp_path, "tinyllama", **overrides)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    prompt = "Once upon a time"
    ids = theirs(prompt)["input_ids"]
    n = 30
    while len(ids) < n + 1:  # run.c's steps: n positions forwarded, the token sampled at the last one printed
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == eos:
            break
        ids.append(nxt)
    assert main(["run", str(tmp_path), "-t", "0", "-n", str(n), "-i", prompt]) == 0
    out = capsysbinary.readouterr().out
    assert out == theirs.decode(ids, skip_special_tokens=True).encode() + b"\n"


def test_generation_stops_at_any_eos_id(tmp_path):
    from llmpy.llama.generate import generate
    from llmpy.llama.hf_load import load_hf
    from llmpy.llama.inference import Transformer
    from llmpy.sampler import Sampler

    model_dir(tmp_path, "smollm2")
    config, weights = load_hf(tmp_path)
    tok = HFTokenizer.load(tmp_path, config.vocab_size)
    transformer = Transformer(config, weights)
    prompt = tok.encode("Hello world", bos=True)
    first = int(transformer.prefill(prompt)[0].argmax())
    result = generate(transformer, tok, Sampler(config.vocab_size, 0.0, 0.9, 1), "Hello world", 20,
                      stop_ids=(config.eos_ids[0], first))
    assert result.tokens == prompt  # the first sampled token is one of the stop ids
    result = generate(transformer, tok, Sampler(config.vocab_size, 0.0, 0.9, 1), "Hello world", 20,
                      stop_ids=config.eos_ids)
    assert result.tokens[:len(prompt)] == prompt and len(result.tokens) > len(prompt)


def test_empty_prompt_without_bos_is_an_error(tmp_path, capsysbinary):
    from llmpy.cli import main

    model_dir(tmp_path, "smollm2")  # GPT2Tokenizer: no BOS added
    assert main(["run", str(tmp_path), "-n", "10"]) == 2
    captured = capsysbinary.readouterr()
    assert b"the prompt is empty" in captured.err and b"Traceback" not in captured.err and captured.out == b""


@pytest.mark.parametrize("name", ["smollm2", "llama3"])
def test_chat_keeps_the_kv_cache_across_turns(tmp_path, name):
    from llmpy.llama.hf_load import load_hf
    from llmpy.llama.inference import Transformer

    model_dir(tmp_path, name, max_position_embeddings=256)
    config, weights = load_hf(tmp_path)
    tok = HFTokenizer.load(tmp_path, config.vocab_size)
    template = ChatTemplate(tok.chat_template, tok.special_tokens)
    transformer = Transformer(config, weights)
    starts = []
    prefill = transformer.prefill

    def spy(tokens, stream=0, start=0, logits="last"):
        starts.append((start, len(tokens)))
        return prefill(tokens, stream=stream, start=start, logits=logits)

    transformer.prefill = spy
    out = io.BytesIO()
    eos = config.eos_ids[0]

    class ShortAnswers:  # greedy, then the eos after 3 tokens: every answer ends by itself
        n = 0

        def sample(self, logits):
            self.n += 1
            return eos if self.n % 4 == 0 else int(np.argmax(logits))

    cached = chat_with_template(transformer, tok, template, ShortAnswers(), 0,
                                io.StringIO("Hi there\nAnd again?\n"), out, system_prompt="Be brief.",
                                stop_ids=config.eos_ids)
    assert out.getvalue().count(b"Assistant: ") == 2 and len(starts) == 2
    first = encode_conversation(tok, template, [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Hi there"}])
    assert starts[0] == (0, len(first))
    assert starts[1][0] >= len(first) and sum(starts[1]) + 3 == len(cached)  # only the new part forwarded
    # what the cache holds is what one forward over the same tokens computes
    want = Transformer(config, weights).prefill(cached, logits="all")[-1]
    got = transformer.forward_token(cached[-1], len(cached) - 1)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_chat_with_template_context_shift(tmp_path):
    """A first answer that runs past a short window: its tokens are those of a loop that runs a fresh Transformer
    over [first turn kept] + [most recent half of the rest] each step; the next turn goes after the shifted cache,
    whose keys and values are those of one forward over the tokens it holds."""
    from llmpy.llama.hf_load import load_hf
    from llmpy.llama.inference import Transformer

    model_dir(tmp_path, "smollm2", max_position_embeddings=256)
    config, weights = load_hf(tmp_path)
    tok = HFTokenizer.load(tmp_path, config.vocab_size)
    template = ChatTemplate(tok.chat_template, tok.special_tokens)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    first = encode_conversation(tok, template, messages)
    window = 2 * len(first) + 30  # the recent half holds the second turn
    keep, eos = len(first), config.eos_ids[0]
    recent = (window - keep) // 2
    n_answer = window + 5  # past the window

    class LongAnswer:  # greedy, eos after n_answer tokens, then short answers
        n = 0

        def sample(self, logits):
            self.n += 1
            return eos if self.n in (n_answer + 1, n_answer + 4) else int(np.argmax(logits))

    ctx, answer = list(first), []
    while len(answer) < n_answer:
        if len(ctx) > window:
            ctx = ctx[:keep] + ctx[len(ctx) - recent:]
        nxt = int(np.argmax(Transformer(config, weights).prefill(ctx)[0]))
        assert nxt not in config.eos_ids
        answer.append(nxt)
        ctx.append(nxt)
    out = io.BytesIO()
    transformer = Transformer(config, weights, max_seq_len=window)
    cached = chat_with_template(transformer, tok, template, LongAnswer(), 0, io.StringIO("Hi there\nAnd again?\n"),
                                out, system_prompt="Be brief.", stop_ids=config.eos_ids, context_shift=True)
    text = out.getvalue()
    pieces = tok.stream()
    printed = b"".join(pieces.push(t) for t in answer) + pieces.finish()
    assert text.startswith(b"User: Assistant: " + printed + b"\nUser: Assistant: ")
    assert b"context full" not in text and cached[:keep] == first and len(cached) < window
    turn2 = tok.encode("<|im_start|>user\nAnd again?<|im_end|>\n<|im_start|>assistant\n", bos=False, eos=False)
    assert any(cached[i:i + len(turn2)] == turn2 for i in range(keep, len(cached)))
    want = Transformer(config, weights).prefill(cached, logits="all")[-1]
    np.testing.assert_allclose(transformer.forward_token(cached[-1], len(cached) - 1), want, atol=1e-4)
    # without the flag: the first answer stops at the end of the window
    out = io.BytesIO()
    chat_with_template(Transformer(config, weights, max_seq_len=window), tok, template, LongAnswer(), 0,
                       io.StringIO("Hi there\n"), out, system_prompt="Be brief.", stop_ids=config.eos_ids)
    assert b"[context full: the conversation reached" in out.getvalue()


def test_run_chat_mode_and_its_errors(tmp_path, monkeypatch, capsysbinary):
    from llmpy.cli import main

    model_dir(tmp_path, "tinyllama", max_position_embeddings=256)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi there\nAnd again?\n"))
    assert main(["run", str(tmp_path), "-m", "chat", "-t", "0", "-n", "0", "-y", "Be brief."]) == 0
    out = capsysbinary.readouterr().out
    assert out.count(b"Assistant: ") >= 1 and out.startswith(b"User: ")
    # without -n a chat may fill the whole context (--context), not run.c's 256 positions
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=1024)))
    seen = []
    monkeypatch.setattr("llmpy.llama.chat.chat_with_template", lambda *a, **k: seen.append(a[4]))
    assert main(["run", str(tmp_path), "-m", "chat", "-y", "", "-i", "hi", "--context", "600"]) == 0
    assert main(["run", str(tmp_path), "-m", "chat", "-y", "", "-i", "hi", "--context", "600", "-n", "50"]) == 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert seen == [600, 50]
    capsysbinary.readouterr()
    # a tokenizer without a chat template cannot chat
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert main(["run", str(tmp_path), "-m", "chat", "-y", "", "-i", "hi"]) == 2
    assert b"has no chat_template" in capsysbinary.readouterr().err
    # a model directory whose weights are gone: an error before anything runs
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    assert main(["run", str(tmp_path), "-i", "hi"]) == 2
    captured = capsysbinary.readouterr()
    assert b"no weights to load" in captured.err and captured.out == b""


SHARED_LLAMA2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "llama2" / "tokenizer.model"


@pytest.mark.skipif(not SHARED_LLAMA2.exists(), reason="../shared/data/llama2 is absent")
def test_real_llama2_vocabulary(tmp_path):
    """Llama 2's 32000-token vocabulary as a tokenizer.json (merges from the sentencepiece scores, as transformers'
    converter makes them): AutoTokenizer's ids, and sentencepiece's own for text without leading spaces or tags."""
    spm = pytest.importorskip("sentencepiece")
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(SHARED_LLAMA2))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = generate_merges(vocab, {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())})
    tok = llama2_pipeline(vocab, merges)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "bos_token": "<s>",
         "eos_token": "</s>", "unk_token": "<unk>", "chat_template": LLAMA2_TEMPLATE}))
    mine = HFTokenizer.load(tmp_path, 32000)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in [*CORPUS, "Once upon a time, there was a little girl named Lily."]:
        ids = theirs(text)["input_ids"]
        assert mine.encode(text) == ids, text
        assert mine.decode_ids(ids) == theirs.decode(ids), text
        if not text.startswith(" ") and "<" not in text:
            assert ids == [1, *sp.encode(text)], text
    messages = conversation(2)[:-1]
    template = ChatTemplate(mine.chat_template, mine.special_tokens)
    assert encode_conversation(mine, template, messages) == apply_chat_template(theirs, messages, tokenize=True)
