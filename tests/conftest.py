"""Shared test helpers: where fixtures live, importing the PyTorch references under tests/reference/, local HTTP
servers on 127.0.0.1 (no real network)."""

import contextlib
import functools
import http.server
import importlib
import sys
import threading
from pathlib import Path

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
