"""`llmpy serve` as a process: a port in use and a model that does not load end with a clear message and a
non-zero exit; SIGINT and SIGTERM end the active streams cleanly (an error event, then [DONE]) and exit 0.
And the chat page at / in a real headless browser (skipped without chromium and playwright)."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_serve import SLOW_SEQ_LEN, Served, make_files, write_slow_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("serve_process"))


@pytest.fixture(scope="module")
def slow_model(files):
    """A model big enough that a 2000-token stream is still running when the signal comes (seconds)."""
    return write_slow_model(files[0].with_name("slow.bin"), files[1].vocab_size)


def launch(*args):
    return subprocess.Popen([sys.executable, "-m", "llmpy", "serve", *map(str, args)], stderr=subprocess.PIPE,
                            text=True)


def wait_ready(proc, timeout=300):
    """The port from the server's 'llmpy serve: ... on http://host:port/' line."""
    end = time.time() + timeout
    while time.time() < end:
        line = proc.stderr.readline()
        m = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        if m:
            proc.ready_line = line
            return int(m.group(1))
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"the server did not start (exit {proc.poll()})")


def test_port_in_use_is_a_clear_error(files):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        proc = launch(files[0], "--port", taken.getsockname()[1])
        _, err = proc.communicate(timeout=300)
    finally:
        taken.close()
    assert proc.returncode == 2
    assert "is in use" in err and "--port" in err and "Traceback" not in err


def test_model_that_does_not_load_starts_no_server(files, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(files[0].read_bytes()[:1000])  # truncated
    proc = launch(bad, "-z", files[0].with_name("tokenizer.bin"), "--port", 0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "bad.bin" in err and "Traceback" not in err and "on http://" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_active_streams_and_exits_0(slow_model, sig):
    proc = launch(slow_model, "--port", 0, "--slots", 2)
    try:
        port = wait_ready(proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {"prompt": "Once", "max_tokens": SLOW_SEQ_LEN - 10, "seed": 1, "stream": True}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")  # streaming
        idle = socket.create_connection(("127.0.0.1", port))  # an idle keep-alive connection must not hold it up
        proc.send_signal(sig)
        rest = resp.read().decode()  # the stream ends: an error event, then [DONE]
        assert '"error"' in rest and rest.rstrip().endswith("data: [DONE]")
        assert proc.wait(timeout=60) == 0
        idle.close()
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctx_and_context_shift_options(files):
    """`llmpy serve MODEL --ctx N --context-shift`: slots of N positions (--ctx is --context), and a reply
    asked for more tokens than that goes on past it."""
    proc = launch(files[0], "--port", 0, "--slots", 1, "--ctx", 48, "--context-shift")
    try:
        port = wait_ready(proc)
        assert "context 48)" in proc.ready_line
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read())["status"] == "ok"
        body = {"prompt": "Once upon a time", "max_tokens": 100, "seed": 3}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
        assert reply["choices"][0]["finish_reason"] == "length" and reply["usage"]["completion_tokens"] == 100
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium installed")
def test_chat_page_streams_a_conversation_in_a_browser(files):
    sync_api = pytest.importorskip("playwright.sync_api")
    s = Served(files[0], slots=2)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"] if os.getuid() == 0 else [])
            page = browser.new_page()
            page.goto(s.url + "/")
            page.wait_for_function("document.getElementById('model').textContent === 'model.bin'")
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "12")
            page.fill("#input", "hello")
            page.click("#send")
            page.wait_for_function("!document.getElementById('send').disabled && "
                                   "document.querySelectorAll('.assistant').length === 1", timeout=60000)
            first = page.locator(".assistant").nth(0).text_content()
            page.fill("#input", "tell me more")
            page.press("#input", "Enter")
            page.wait_for_function("!document.getElementById('send').disabled && "
                                   "document.querySelectorAll('.assistant').length === 2", timeout=60000)
            second = page.locator(".assistant").nth(1).text_content()
            assert page.locator(".error").count() == 0
            browser.close()
        # the page's turns are what the API gives for the same conversation (greedy: no seed needed)
        r1 = s.client.chat.completions.create(model="model.bin", temperature=0, max_tokens=12,
                                              messages=[{"role": "user", "content": "hello"}])
        answer = r1.choices[0].message.content
        assert first == "Assistant: " + answer and len(answer) > 3
        r2 = s.client.chat.completions.create(model="model.bin", temperature=0, max_tokens=12, messages=[
            {"role": "user", "content": "hello"}, {"role": "assistant", "content": answer},
            {"role": "user", "content": "tell me more"}])
        assert second == "Assistant: " + r2.choices[0].message.content
    finally:
        s.close()


def test_bench_serve_smoke(capsys):
    """The benchmark on the tiny shape: every level reports, the soak loses no request, the server exits 0."""
    from llmpy.cli import main

    code = main(["bench", "serve", "--models", "tiny", "--clients", "1,2", "--tokens", "8", "--soak-seconds", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^ +2 +[\d.]+ ", out, re.MULTILINE) and " 0 lost" in out and "x llmpy run" in out
