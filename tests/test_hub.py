"""llmpy.hub against a local stand-in for the Hugging Face hub on 127.0.0.1 (no real network).

`llmpy run stories15M` runs in a subprocess with HF_ENDPOINT pointing at the stand-in (huggingface_hub reads
its environment when imported): the model is fetched once into the Hugging Face cache, then used offline.
With nothing cached, HF_HUB_OFFLINE=1 or an unreachable hub is one clear error after at most one request.
"""

import hashlib
import http.server
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import http_server, write_tiny_llama

from llmpy.cli import main
from llmpy.errors import LlmpyError
from llmpy.hub import TINYLLAMAS_REPO, llama2c_tokenizer

pytest.importorskip("huggingface_hub")
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the repository revision the stand-in reports
MODEL_URL_PATH = f"/{TINYLLAMAS_REPO}/resolve/main/stories15M.bin"


class HubHandler(http.server.BaseHTTPRequestHandler):
    """The part of the hub's HTTP API that hf_hub_download uses: HEAD and GET of /{repo}/resolve/{rev}/{file},
    answered with the ETag (the file's sha256), X-Repo-Commit and Content-Length it reads."""

    files: ClassVar[dict] = {}  # URL path -> bytes
    log: ClassVar[list] = []  # (method, path) of every request
    fail_with: ClassVar[list] = []  # [status] to answer every request with, e.g. 503
    fail_headers: ClassVar[dict] = {}  # headers of those answers, e.g. {"X-Error-Code": "GatedRepo"}

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def _answer(self, send_body):
        path = self.path.split("?")[0]
        HubHandler.log.append((self.command, path))
        if HubHandler.fail_with:
            self.send_response(HubHandler.fail_with[0])
            for name, value in HubHandler.fail_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = HubHandler.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)


@pytest.fixture(scope="module")
def hub_server():
    with http_server(HubHandler) as url:
        yield url


@pytest.fixture
def hub(hub_server):
    HubHandler.files.clear()
    HubHandler.log.clear()
    HubHandler.fail_with.clear()
    HubHandler.fail_headers.clear()
    return hub_server


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model.bin, tokenizer.bin) of a tiny llama2.c model."""
    return write_tiny_llama(tmp_path_factory.mktemp("hub_model"), 64, seed=7, tokenizer_name="tok.bin")


def llmpy(tmp_path, endpoint, *argv, offline=False):
    """Run `python -m llmpy argv` with the hub at `endpoint` and caches under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"),
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "llmpy", *map(str, argv)], capture_output=True, env=env,
                          timeout=300, check=False)


def test_run_downloads_stories15M_once(hub, tiny, tmp_path, capsysbinary):
    model, tok = tiny
    HubHandler.files[MODEL_URL_PATH] = model.read_bytes()
    flags = ["-z", tok, "-n", 24, "-t", 0, "-i", "hello"]
    assert main(["run", str(model), *map(str, flags)]) == 0
    want = capsysbinary.readouterr().out
    got = llmpy(tmp_path, hub, "run", "stories15M", *flags)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == want and want.startswith(b"hello")
    assert ("GET", MODEL_URL_PATH) in HubHandler.log
    cached = tmp_path / "hf" / "hub" / "models--karpathy--tinyllamas" / "snapshots" / COMMIT / "stories15M.bin"
    assert cached.read_bytes() == model.read_bytes()
    # from the cache: offline, and online without asking the hub again
    n_requests = len(HubHandler.log)
    for offline in (True, False):
        again = llmpy(tmp_path, hub, "run", "stories15M", *flags, offline=offline)
        assert again.returncode == 0 and again.stdout == want, again.stderr.decode()
    assert len(HubHandler.log) == n_requests


def test_offline_with_an_empty_cache(hub, tmp_path):
    got = llmpy(tmp_path, hub, "run", "stories15M", offline=True)
    err = got.stderr.decode()
    assert got.returncode == 2 and "Traceback" not in err, err
    assert "HF_HUB_OFFLINE" in err and str(tmp_path / "hf" / "hub") in err and "stories15M.bin" in err
    assert HubHandler.log == []


def test_unreachable_hub_fails_after_one_request(hub, tmp_path):
    HubHandler.fail_with.append(503)
    got = llmpy(tmp_path, hub, "run", "stories42M")
    err = got.stderr.decode()
    assert got.returncode == 2 and "cannot reach" in err and str(tmp_path / "hf" / "hub") in err, err
    assert HubHandler.log == [("HEAD", f"/{TINYLLAMAS_REPO}/resolve/main/stories42M.bin")]  # no retry loop
    # `llmpy sample gpt2` the same way, naming the llm.c checkpoint to use instead
    HubHandler.log.clear()
    got = llmpy(tmp_path, hub, "sample", "gpt2", "-n", 4)
    err = got.stderr.decode()
    assert got.returncode == 2 and "cannot reach" in err and "gpt2_124M.bin" in err and "Traceback" not in err, err
    assert len(HubHandler.log) == 1
    # nothing listening at all
    got = llmpy(tmp_path, "http://127.0.0.1:9", "run", "stories110M")
    assert got.returncode == 2 and b"cannot reach" in got.stderr and b"Traceback" not in got.stderr


def test_missing_file_on_the_hub(hub, tmp_path):
    got = llmpy(tmp_path, hub, "run", "stories15M")
    err = got.stderr.decode()
    assert got.returncode == 2 and "does not exist" in err and "Traceback" not in err, err


GATED = "Access to model owner/gated is restricted. You must have access to it and be authenticated to access it."


@pytest.mark.parametrize("status, headers, model, missing", [
    (401, {"X-Error-Code": "GatedRepo", "X-Error-Message": GATED}, "stories15M", False),  # not logged in
    (403, {"X-Error-Code": "GatedRepo", "X-Error-Message": GATED}, "owner/gated", False),  # license not accepted
    (403, {}, "owner/gated", False),  # refused, no error code
    (401, {}, "stories42M", False),
    (401, {"X-Error-Code": "RepoNotFound"}, "owner/private", True),  # the hub's answer for private and missing alike
])
def test_gated_or_private_repository(hub, tmp_path, status, headers, model, missing):
    """The hub refusing access is not "does not exist" nor "cannot reach": it says to accept and log in."""
    HubHandler.fail_with.append(status)
    HubHandler.fail_headers.update(headers)
    got = llmpy(tmp_path, hub, "run", model)
    err = got.stderr.decode()
    assert got.returncode == 2 and "Traceback" not in err and "cannot reach" not in err, err
    assert "is gated or private" in err and "accept its license on the hub and log in" in err, err
    assert "hf auth login" in err and "HF_TOKEN" in err, err
    assert ("does not exist" in err) == missing, err
    assert len(HubHandler.log) == 1  # one request, no retries


def test_tokenizer_download_checked_and_cached(hub, tiny, tmp_path):
    _, tok = tiny
    data = tok.read_bytes()
    HubHandler.files["/llama2.c/tokenizer.bin"] = data
    url = f"{hub}/llama2.c/tokenizer.bin"
    sha = hashlib.sha256(data).hexdigest()
    path = llama2c_tokenizer(url, sha, cache_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / "tokenizer.bin" and path.read_bytes() == data
    n_requests = len(HubHandler.log)
    assert llama2c_tokenizer(url, sha, cache_dir=tmp_path / "cache") == path and len(HubHandler.log) == n_requests
    with pytest.raises(LlmpyError, match="checksum mismatch"):
        llama2c_tokenizer(url, "0" * 64, cache_dir=tmp_path / "other")
    assert not any(Path(tmp_path / "other").iterdir())
