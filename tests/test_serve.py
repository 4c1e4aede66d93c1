"""`llmpy serve` in-process on 127.0.0.1 against a tiny random llama2.c model, through the official openai
client and raw HTTP: the same text as `llmpy run` for the same seed, streamed or not, alone or among 7
concurrent requests; stop strings, max_tokens; bad requests answered 4xx with OpenAI's error body;
disconnected clients free their slot; a full queue answers 503."""

import concurrent.futures
import http.client
import io
import itertools
import json
import queue
import socket
import sys
import threading
import time

import numpy as np
import pytest
from conftest import import_reference

from llmpy.cli import main
from llmpy.cli.run import model_options
from llmpy.cli.serve import start
from llmpy.formats.llama2c import write_llama2c
from llmpy.llama.inference import Transformer
from llmpy.llama.model import LlamaConfig, random_weights
from llmpy.sampler import Sampler
from llmpy.serve import api
from llmpy.serve.engine import Engine, QueueFull, Request, TextStream
from llmpy.serve.http import Sink, sse_chunk
from llmpy.tokenizers.llama2 import Llama2Tokenizer, safe_piece

openai = pytest.importorskip("openai")
SEQ_LEN = 128
SLOW_SEQ_LEN = 2048
PROMPTS = ["Once upon a time", "hello world", "The cat", "", "a b c d e f g h i j k l m n o p", "big", "x", "Lily"]


def make_files(d):
    """tokenizer.bin and model.bin (random weights) in d; returns (model path, tokenizer)."""
    vocab, scores = import_reference("llama_torch").tiny_tokenizer_pieces()
    tok = Llama2Tokenizer(vocab, scores)
    tok.save(d / "tokenizer.bin")
    config = LlamaConfig(32, 64, 2, 4, 2, len(vocab), SEQ_LEN, True)
    write_llama2c(d / "model.bin", config, random_weights(config, np.random.default_rng(0), scale=0.3), 0)
    return d / "model.bin", tok


def write_slow_model(path, vocab_size):
    """A model big enough that a long reply takes seconds (so that it is still running when a test acts)."""
    config = LlamaConfig(256, 768, 4, 8, 8, vocab_size, SLOW_SEQ_LEN, True)
    write_llama2c(path, config, random_weights(config, np.random.default_rng(1)), 0)
    return path


class Served:
    """A server running in this process (a thread), stopped by close()."""

    def __init__(self, model, slots=4, queue=64, context_shift=False, **options):  # options: the model's (dtype=...)
        self.server = start(model_options(model, **options), port=0, slots=slots, queue=queue,
                            context_shift=context_shift)
        self.thread = threading.Thread(target=self.server.serve_forever)
        self.thread.start()
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def raw(self, method, path, body=None, headers=None):
        """(status, parsed JSON body) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, data, headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read())
        conn.close()
        return out

    def healthy(self):
        status, body = self.raw("GET", "/health")
        return status == 200 and body["status"] == "ok"

    def wait_idle(self, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if self.server.engine.counts() == (0, 0):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.server.stop()
        self.thread.join()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def served(files):
    s = Served(files[0], slots=8, queue=16)
    yield s
    s.close()


def complete(served, prompt, seed, max_tokens=24, **kw):
    r = served.client.completions.create(model="model.bin", prompt=prompt, max_tokens=max_tokens, seed=seed, **kw)
    return r.choices[0].text, r.choices[0].finish_reason, r.usage


def run_text(files, capsysbinary, prompt, seed, n_prompt, max_tokens, temperature, top_p, *options):
    """What `llmpy run` prints after the prompt, for n_prompt + max_tokens - 1 positions (run.c's steps)."""
    model, tok = files
    code = main(["run", str(model), "-z", str(model.with_name("tokenizer.bin")), "-i", prompt, "-s", str(seed),
                 "-t", str(temperature), "-p", str(top_p), "-n", str(n_prompt + max_tokens - 1), *options])
    out, _ = capsysbinary.readouterr()
    assert code == 0
    tokens = tok.encode(prompt, bos=True)
    printed_prompt = b"".join(safe_piece(tok.decode(a, b)) for a, b in itertools.pairwise(tokens))
    assert out.startswith(printed_prompt) and out.endswith(b"\n")
    return out[len(printed_prompt):-1].decode("utf-8", errors="replace")


# -----------------------------------------------------------------------------
# the engine's pieces

def test_text_stream_holds_back_a_possible_stop_string():
    ts = TextStream(("STOP", "\n\n"))
    assert ts.feed(b"abc S") == ("abc ", False)  # "S" may begin STOP
    assert ts.feed(b"T") == ("", False)
    assert ts.feed(b"x") == ("STx", False)  # not a stop after all
    assert ts.feed(b"\xe4\xb8") == ("", False)  # half a character waits for its last byte
    assert ts.feed(b"\x96 ST") == ("\u4e16 ", False)
    assert ts.feed(b"OP and more") == ("", True)
    ts = TextStream()
    assert ts.feed(b"a\xff") == ("a\ufffd", False)
    assert ts.feed(b"\xe4") == ("", False) and ts.flush() == "\ufffd"


def test_engine_queue_full_is_refused_at_once(files):
    from llmpy.serve.model import load_served

    model = load_served(model_options(files[0]), slots=1)
    engine = Engine(model, queue_size=1)  # not started: requests stay queued
    for _ in range(2):  # one for the free slot, one waiting
        engine.submit(Request([1, 5], 3, Sampler(model.vocab_size), frozenset([1])))
    with pytest.raises(QueueFull):
        engine.submit(Request([1, 5], 3, Sampler(model.vocab_size), frozenset([1])))


def test_long_prompt_is_prefilled_in_chunks_between_decode_steps(files):
    """A 100-token prompt arriving while another request decodes: the decoder gains a token every step, and
    the prompt goes in chunks of prefill_chunk rows, one per step in a forward of its own (as Transformer.prefill
    chunks it), leaving the KV cache Transformer.prefill leaves."""
    from llmpy.serve.model import load_served

    model = load_served(model_options(files[0]), slots=2)
    model.prefill_chunk = 40
    calls = []
    forward = model.forward
    model.forward = lambda t, p, s: calls.append((list(s), list(p))) or forward(t, p, s)
    engine = Engine(model)  # stepped by hand: no thread
    a = Request(model.encode_prompt("hi"), 60, Sampler(model.vocab_size, 1.0, 1.0, 3), frozenset())
    engine.submit(a)
    engine._admit()
    engine._step()  # a's prompt, and its first token
    assert a.n_generated == 1
    b = Request(model.encode_prompt("a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2), 5,
                Sampler(model.vocab_size, 1.0, 1.0, 4), frozenset())
    n = len(b.tokens)
    assert n > 2 * 40
    engine.submit(b)
    engine._admit()
    calls.clear()
    steps = 0
    while b.n_generated == 0:
        engine._step()
        steps += 1
        assert a.n_generated == 1 + steps  # a decoded in every step
    slot_b = 1 - a_slot(engine, a)
    chunks = [p for s, p in calls if s[0] == slot_b]
    assert [(p[0], len(p)) for p in chunks] == [(0, 40), (40, 40), (80, n - 80)] and steps == 3
    assert all(set(s) == {1 - slot_b} for s, p in calls if s[0] != slot_b)  # decode forwards: a alone
    ref = Transformer.from_file(files[0], max_rows=40)
    ref.prefill(b.tokens)
    np.testing.assert_array_equal(model.transformer.key_cache[:, slot_b, :, :n], ref.key_cache[:, 0, :, :n])


def test_sink_sends_in_order_what_the_socket_takes_later():
    """A stream's text chunks sent from the engine's thread: before the headers they wait; what a full socket
    does not take waits behind, with one ("flush", None) event for the handler, which sends it in order."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    events = queue.SimpleQueue()
    sink = Sink(a, (b'{"t": ', b"}"), events)
    texts = ["before the headers"] + [f"piece {i} \u00e9\"" + "x" * 100 for i in range(400)]  # > the buffers
    assert sink.text(texts[0]) and events.empty()
    sink.open()
    assert all(sink.text(t) for t in texts[1:])
    assert events.get_nowait() == ("flush", None) and events.empty()  # one wake-up for the whole backlog
    want = b"".join(sse_chunk(b'{"t": ' + json.dumps(t).encode() + b"}") for t in texts)
    got = bytearray()

    def read():
        while len(got) < len(want):
            got.extend(b.recv(65536))

    reader = threading.Thread(target=read)
    reader.start()
    sink.flush()
    reader.join(30)
    assert bytes(got) == want
    b.close()
    assert not sink.text("after the client left")
    a.close()


def test_text_chunk_template_is_the_chunk_json():
    for chat, usage in [(False, False), (True, True)]:
        call = api.Call(Request([1, 2], 5, Sampler(10), frozenset()), chat, True, usage, "id-1", 7)
        prefix, suffix = api.text_chunk_template(call, "m.bin")
        for text in [" w1", 'quote " and \\', "\u00e9\u4e16\n", ""]:
            assert prefix + json.dumps(text).encode() + suffix == json.dumps(api.chunk(call, "m.bin", text)).encode()


def a_slot(engine, request):
    return next(i for i, s in enumerate(engine.slots) if s is not None and s.request is request)


# -----------------------------------------------------------------------------
# the OpenAI client

def test_models_and_health(served):
    assert [m.id for m in served.client.models.list().data] == ["model.bin"]
    status, body = served.raw("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["slots"] == 8


@pytest.mark.parametrize("temperature, top_p", [(1.0, 0.9), (0.0, 1.0), (0.8, 1.0)])
def test_completion_equals_llmpy_run(served, files, capsysbinary, temperature, top_p):
    prompt, seed, max_tokens = "Once upon a time", 42, 30
    text, finish, usage = complete(served, prompt, seed, max_tokens, temperature=temperature, top_p=top_p)
    n_prompt = len(files[1].encode(prompt, bos=True))
    assert usage.prompt_tokens == n_prompt
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish == "length":
        assert usage.completion_tokens == max_tokens
    assert text == run_text(files, capsysbinary, prompt, seed, n_prompt, max_tokens, temperature, top_p)
    assert len(text) > 10


@pytest.mark.parametrize("options, dtype", [({"quantize": "q8"}, "int8"), ({"dtype": "bf16"}, "bf16")])
def test_weight_options_give_llmpy_runs_text(files, capsysbinary, options, dtype):
    """`llmpy serve --quantize q8` (or --dtype bf16) answers what `llmpy run` with the same option prints, for
    a short prompt and one longer than a fused call; the fp32 model's text differs (the option took effect)."""
    flags = [f"--{k}={v}" for k, v in options.items()]
    s = Served(files[0], slots=2, **options)
    try:
        assert s.server.model.transformer.dtype == dtype
        for prompt, seed in [("Once upon a time", 5), ("a b c d e f g h i j k l m n o p q r s t u v w x y z", 6)]:
            n_prompt = len(files[1].encode(prompt, bos=True))
            text, _, usage = complete(s, prompt, seed, 30, temperature=1.0, top_p=0.9)
            assert len(text) > 10 and usage.prompt_tokens == n_prompt
            assert text == run_text(files, capsysbinary, prompt, seed, n_prompt, 30, 1.0, 0.9, *flags)
            assert text != run_text(files, capsysbinary, prompt, seed, n_prompt, 30, 1.0, 0.9)
        assert n_prompt > s.server.model.step_rows  # the second prompt is prefilled in chunks
    finally:
        s.close()


def test_serve_refuses_two_weight_types(files, capsys):
    assert main(["serve", str(files[0]), "--dtype", "bf16", "--quantize", "q8", "--port", "0"]) == 2
    assert "two weight types" in capsys.readouterr().err


def test_long_prompt_completion_equals_llmpy_run(served, files, capsysbinary):
    """A prompt longer than a fused call (prefilled with sgemm by `llmpy run`), served among other requests."""
    prompt = "Once upon a time there was a little girl named Lily who loved to play outside in the park"
    n_prompt = len(files[1].encode(prompt, bos=True))
    assert n_prompt > served.server.model.step_rows
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        others = [pool.submit(complete, served, p, 50 + i, 30) for i, p in enumerate(PROMPTS[:3])]
        text, _, _ = complete(served, prompt, 21, 25, temperature=1.0, top_p=0.9)
        [f.result() for f in others]
    assert text == run_text(files, capsysbinary, prompt, 21, n_prompt, 25, 1.0, 0.9)


def test_chat_equals_llmpy_run_chat(served, files, capsysbinary, monkeypatch):
    system, user, seed = "You are a storyteller.", "Tell me a story", 7
    r = served.client.chat.completions.create(model="model.bin", seed=seed, temperature=1.0, top_p=0.9, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": user}])
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # one turn, then end of input
    code = main(["run", str(files[0]), "-z", str(files[0].with_name("tokenizer.bin")), "-m", "chat", "-y", system,
                 "-i", user, "-s", str(seed), "-t", "1.0", "-p", "0.9", "-n", "0"])
    out, _ = capsysbinary.readouterr()
    assert code == 0
    # run's chat prints the reply, then "[context full ...]" if it ran out of room (the server's "length"),
    # then asks for the next turn
    out = out.decode("utf-8", errors="replace")
    after = {"stop": "\nUser: ", "length": "\n[context full"}[r.choices[0].finish_reason]
    assert len(text) > 10 and out.startswith("Assistant: " + text + after)
    assert r.usage.completion_tokens + r.usage.prompt_tokens <= SEQ_LEN


def test_stream_equals_whole_reply(served):
    whole, finish, usage = complete(served, "The cat", 5, 40)
    chunks = list(served.client.completions.create(model="model.bin", prompt="The cat", max_tokens=40, seed=5,
                                                   stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"},
                {"role": "user", "content": "a story please"}]
    r = served.client.chat.completions.create(model="model.bin", messages=messages, seed=9, max_tokens=30)
    chunks = list(served.client.chat.completions.create(model="model.bin", messages=messages, seed=9, max_tokens=30,
                                                        stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_stop_strings_and_max_tokens(served):
    text, finish, usage = complete(served, "hello world", 11, 60)
    assert finish == "length" and usage.completion_tokens == 60
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = text[:text.find(stop)]
    got, finish, _ = complete(served, "hello world", 11, 60, stop=stop)
    assert (got, finish) == (cut, "stop")
    got, finish, _ = complete(served, "hello world", 11, 60, stop=["\u0000never", stop])
    assert (got, finish) == (cut, "stop")
    short, finish, usage = complete(served, "hello world", 11, 5)
    assert finish == "length" and usage.completion_tokens == 5 and text.startswith(short)
    other, _, _ = complete(served, "hello world", 12, 60)
    assert other != text  # the seed matters


def test_batching_changes_no_result(served):
    """Each of 8 requests (different prompts, seeds, lengths, streamed or not) served together gives the text
    it gives alone."""
    jobs = [(p, 100 + i, 20 + 7 * i, i % 2 == 1) for i, p in enumerate(PROMPTS)]

    def one(job):
        prompt, seed, max_tokens, stream = job
        if not stream:
            return complete(served, prompt, seed, max_tokens)[0]
        chunks = served.client.completions.create(model="model.bin", prompt=prompt, max_tokens=max_tokens, seed=seed,
                                                  stream=True)
        return "".join(c.choices[0].text for c in chunks)

    alone = [one(job) for job in jobs]
    steps = served.server.engine.steps
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(one, jobs))
    assert together == alone
    n_tokens = sum(20 + 7 * i for i in range(len(jobs)))
    assert served.server.engine.steps - steps < n_tokens / 2  # they really shared forwards


@pytest.mark.parametrize("ctx, max_tokens", [(40, 90), (100, 150)])
def test_context_shift_continues_as_llmpy_run(files, capsysbinary, ctx, max_tokens):
    """--context-shift: a reply that runs past a small --context goes on with the text `llmpy run --ctx N
    --context-shift` prints, served among other requests or alone: each shift forwards the window's tail again
    (ctx 40: 17 rows, in the shared forward; ctx 100: 47 rows, in a forward of its own, as run's prefill)."""
    s = Served(files[0], slots=4, context=ctx, context_shift=True)
    try:
        prompt, seed = "Once upon a time", 3
        n_prompt = len(files[1].encode(prompt, bos=True))
        steps = s.server.engine.steps
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            others = [pool.submit(complete, s, p, 60 + i, max_tokens) for i, p in enumerate(PROMPTS[1:4])]
            text, finish, usage = complete(s, prompt, seed, max_tokens, temperature=1.0, top_p=0.9)
            assert all(f.result()[0] for f in others)
        assert finish == "length" and usage.completion_tokens == max_tokens > ctx  # past the context
        assert s.server.engine.steps - steps < 2 * max_tokens  # the requests shared forwards
        assert text == run_text(files, capsysbinary, prompt, seed, n_prompt, max_tokens, 1.0, 0.9,
                                "--ctx", str(ctx), "--context-shift")
        assert complete(s, prompt, seed, max_tokens, temperature=1.0, top_p=0.9)[0] == text
        # without max_tokens the reply still ends where the context does
        _, finish, usage = complete(s, prompt, seed, None, temperature=0.0)
        assert (finish, usage.completion_tokens) == ("length", ctx - n_prompt)
    finally:
        s.close()


def test_chat_context_shift_continues_as_llmpy_run_chat(files, capsysbinary, monkeypatch):
    """A chat reply past a small --context: the text `llmpy run -m chat --ctx N --context-shift` prints (which keeps
    the first turn, as the server keeps the prompt)."""
    s = Served(files[0], slots=2, context=48, context_shift=True)
    try:
        user, seed = "Tell me a story", 4
        r = s.client.chat.completions.create(model="model.bin", seed=seed, temperature=1.0, top_p=0.9,
                                             max_tokens=120, messages=[{"role": "user", "content": user}])
        text = r.choices[0].message.content
        assert r.usage.prompt_tokens + r.usage.completion_tokens > 48  # past the context
    finally:
        s.close()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(["run", str(files[0]), "-z", str(files[0].with_name("tokenizer.bin")), "-m", "chat", "-y", "",
                 "-i", user, "-s", str(seed), "-t", "1.0", "-p", "0.9", "--ctx", "48", "--context-shift"])
    out, _ = capsysbinary.readouterr()
    assert code == 0
    assert len(text) > 10 and out.decode("utf-8", errors="replace").startswith("Assistant: " + text)


def test_without_context_shift_a_reply_past_the_context_is_refused(files):
    s = Served(files[0], slots=1, context=40)
    try:
        status, reply = s.raw("POST", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 90})
        assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
        assert s.server.model.ctx == 40
    finally:
        s.close()


# -----------------------------------------------------------------------------
# bad requests

BAD_BODIES = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 2.5}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 1000}, 400, "max_tokens"),
    ({"prompt": "hi " * 200}, 400, "prompt"),
    ({"prompt": "x" * 100_000}, 400, "prompt"),
    (b"[" * 100_000 + b"]" * 100_000, 400, None),
    ({"prompt": 42}, 400, "prompt"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "hi", "n": 2}, 400, "n"),
    ({"prompt": "hi", "logprobs": 3}, 400, "logprobs"),
    ({"prompt": "hi", "echo": True}, 400, "echo"),
    ({"prompt": "hi", "seed": 0}, 400, "seed"),
    ({"prompt": "hi", "stop": ["a", 3]}, 400, "stop"),
    ({"prompt": "hi", "stream": "yes"}, 400, "stream"),
    ({"prompt": "hi", "frobnicate": 1}, 400, "frobnicate"),
]
BAD_CHATS = [
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi " * 100_000}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tools"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "max_completion_tokens": 5}, 400,
     "max_tokens"),
]


@pytest.mark.parametrize("body, status, param", BAD_BODIES + [(b, s, p) for b, s, p in BAD_CHATS])
def test_bad_requests_get_an_error_body(served, body, status, param):
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    got, reply = served.raw("POST", path, body)
    assert got == status
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["message"]
    assert reply["error"]["param"] == param
    assert served.healthy()


def test_huge_body_is_refused_before_reading(served):
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000000\r\n\r\n{\"prompt\": ")  # 100 MB announced, a few bytes sent
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    assert resp.status == 413 and "error" in json.loads(resp.read())
    sock.close()
    assert served.raw("GET", "/nowhere")[0] == 404
    assert served.raw("GET", "/v1/completions")[0] == 405
    assert served.raw("POST", "/health", {})[0] == 405
    assert served.healthy()


def test_openai_client_sees_the_error(served):
    with pytest.raises(openai.BadRequestError, match="not supported"):
        served.client.completions.create(model="model.bin", prompt="hi", n=2)
    with pytest.raises(openai.NotFoundError):
        served.client.completions.create(model="gpt-4", prompt="hi")


def _handler_threads():
    return [t for t in threading.enumerate() if t.name.startswith("Thread-") and "process_request" in t.name]


def test_disconnected_client_frees_its_slot(files):
    served = Served(write_slow_model(files[0].with_name("slow.bin"), files[1].vocab_size), slots=2)
    try:
        _disconnect_mid_reply(served)
    finally:
        served.close()


def _disconnect_mid_reply(served):
    baseline = len(_handler_threads())
    for stream in (True, False):
        steps = served.server.engine.steps
        sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        body = json.dumps({"prompt": "Once", "max_tokens": SLOW_SEQ_LEN - 10, "seed": 3, "stream": stream}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        if stream:
            got = b""
            while b"data: " not in got:  # the stream has started
                got += sock.recv(4096)
            assert served.server.engine.counts()[0] == 1  # while the reply is generated: chunks are not held back
        else:
            while served.server.engine.steps < steps + 20:  # the reply is being generated
                time.sleep(0.01)
        sock.close()  # gone mid-reply
        assert served.wait_idle(), "the slot of a disconnected client was not freed"
        assert served.server.engine.steps - steps < SLOW_SEQ_LEN / 2  # cancelled, not run to its end
    status, r = served.raw("POST", "/v1/completions", {"prompt": "The cat", "max_tokens": 10, "seed": 5})
    assert status == 200 and r["usage"]["completion_tokens"] == 10  # served as usual
    end = time.time() + 10
    while len(_handler_threads()) > baseline and time.time() < end:
        time.sleep(0.05)
    assert len(_handler_threads()) <= baseline


def test_full_queue_answers_503(files):
    s = Served(write_slow_model(files[0].with_name("slow.bin"), files[1].vocab_size), slots=1, queue=0)
    try:  # the slow model: the reply is still being generated when the next request comes
        stream = s.client.completions.create(model="slow.bin", prompt="Once", max_tokens=SLOW_SEQ_LEN - 10, seed=3,
                                             stream=True)
        next(iter(stream))  # the only slot is busy
        status, body = s.raw("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 503 and body["error"]["code"] == "queue_full"
        stream.close()
        assert s.wait_idle()
        assert s.raw("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200
    finally:
        s.close()


def test_a_failing_step_is_a_500_and_the_server_goes_on(served, monkeypatch):
    model = served.server.model
    forward = model.forward
    calls = []

    def fails_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated kernel failure")
        return forward(*args)

    monkeypatch.setattr(model, "forward", fails_once)
    status, body = served.raw("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 4, "seed": 2})
    assert status == 500 and "simulated kernel failure" in body["error"]["message"]
    assert served.healthy()
    assert served.raw("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 4, "seed": 2})[0] == 200
