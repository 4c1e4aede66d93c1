"""Shared test helpers: where fixtures live, importing the PyTorch references under tests/reference/, a tiny
llama2.c model with its tokenizer, a TinyStories-like archive, local HTTP servers on 127.0.0.1 (no real network)."""

import contextlib
import functools
import http.server
import importlib
import io
import json
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = TESTS_DIR / "reference"
FIXTURES_DIR = TESTS_DIR / "fixtures"


def import_reference(module_name):
    """Import tests/reference/<module_name>.py; skips the calling test when torch is not installed."""
    pytest.importorskip("torch")
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.insert(0, str(REFERENCE_DIR))
    return importlib.import_module(module_name)


def write_tiny_llama(d, seq_len, seed, tokenizer_name="tokenizer.bin"):
    """A tiny llama2.c v0 model (dim 32, hidden 64, 2 layers, 4 heads over 2 key/value heads, random weights of
    scale 0.3 from `seed`) and its tokenizer.bin (llama_torch.tiny_tokenizer_pieces) in directory d; returns
    (model path, tokenizer path). Skips the calling test when torch is not installed."""
    from llmpy.formats.llama2c import write_llama2c
    from llmpy.llama.model import LlamaConfig, random_weights
    from llmpy.tokenizers.llama2 import Llama2Tokenizer

    vocab, scores = import_reference("llama_torch").tiny_tokenizer_pieces()
    Llama2Tokenizer(vocab, scores).save(d / tokenizer_name)
    config = LlamaConfig(32, 64, 2, 4, 2, len(vocab), seq_len, True)
    write_llama2c(d / "model.bin", config, random_weights(config, np.random.default_rng(seed), scale=0.3), 0)
    return d / "model.bin", d / tokenizer_name


def write_stories_archive(archive, files):
    """A .tar.gz in TinyStories' layout at `archive`: files maps a member name (data00.json) to the list it holds,
    written as JSON ([{"story": ...}, ...]). Returns archive."""
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return archive


def patched_copy(src, dst, offset=None, dtype="<i4", value=None, truncate=None, append=b""):
    """dst = a copy of the file src with `value` written as `dtype` at byte `offset`, then cut to [:truncate],
    then `append` added: the damaged files of the reader tests. Returns dst."""
    raw = bytearray(Path(src).read_bytes())
    if offset is not None:
        item = np.dtype(dtype).itemsize
        raw[offset:offset + item] = np.array([value], dtype=dtype).tobytes()
    if truncate is not None:
        raw = raw[:truncate]
    Path(dst).write_bytes(bytes(raw) + append)
    return dst


@pytest.fixture
def torch():
    """The torch module, or a skip when it is not installed."""
    return pytest.importorskip("torch")


@contextlib.contextmanager
def http_server(handler):
    """A threading HTTP server on 127.0.0.1, on a free port, answering with `handler`; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def static_server(tmp_path):
    """A static HTTP server on 127.0.0.1 over a temporary directory; yields (root dir, base url)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    with http_server(handler) as url:
        yield root, url
