"""`llmpy serve` on a Hugging Face Llama directory (a tiny random LlamaForCausalLM and a byte-level tokenizer
with a ChatML template): completions and chat replies equal `llmpy run` on the same directory and seed, and
a template's refusal is a 400."""

import io
import sys

import pytest
from test_serve import Served

from llmpy.cli import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
VOCAB = 400  # the smollm2-style test tokenizer's ids are < 400


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from test_hf_llama import make_checkpoint
    from test_hf_llama_tokenizer import save_tokenizer

    d = tmp_path_factory.mktemp("hf_serve")
    make_checkpoint(d, vocab_size=VOCAB, max_position_embeddings=128, eos_token_id=None)
    save_tokenizer(d, "smollm2")  # ChatML: <|im_start|>role ... <|im_end|>, eos <|im_end|>
    return d


@pytest.fixture(scope="module")
def served(hf_dir):
    s = Served(hf_dir, slots=4)
    yield s
    s.close()


def run_out(capsysbinary, *argv):
    assert main(["run", *map(str, argv)]) == 0
    return capsysbinary.readouterr()[0].decode("utf-8", errors="replace")


def test_completion_equals_llmpy_run(served, hf_dir, capsysbinary):
    name = served.server.model.name
    for seed in (3, 4):
        r = served.client.completions.create(model=name, prompt="Hello world", max_tokens=20, seed=seed,
                                             temperature=1.0, top_p=0.9)
        text = r.choices[0].text
        n = r.usage.prompt_tokens + r.usage.completion_tokens - 1  # run's steps: positions, prompt included
        out = run_out(capsysbinary, hf_dir, "-i", "Hello world", "-s", seed, "-t", 1.0, "-p", 0.9, "-n", n)
        assert len(text) > 5 and out.endswith(text + "\n")


def test_chat_equals_llmpy_run_chat(served, hf_dir, capsysbinary, monkeypatch):
    name = served.server.model.name
    r = served.client.chat.completions.create(model=name, seed=8, temperature=1.0, top_p=0.9, max_tokens=40,
                                              messages=[{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "hi there"}])
    text = r.choices[0].message.content
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    out = run_out(capsysbinary, hf_dir, "-m", "chat", "-y", "Be brief.", "-i", "hi there", "-s", 8, "-t", 1.0,
                  "-p", 0.9, "-n", r.usage.prompt_tokens + 40)
    assert len(text) > 5 and out.startswith("Assistant: " + text + "\n")
    # a conversation ChatML takes but Llama 2's template would not: two user messages in a row
    two = served.client.chat.completions.create(model=name, seed=8, max_tokens=5, messages=[
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert two.usage.completion_tokens >= 1
