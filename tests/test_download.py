"""download_file against a local HTTP server on 127.0.0.1 (no real network): progress, resume, checksums."""

import hashlib
import http.server
import threading
from typing import ClassVar

import pytest

from llmpy.data.download import download_file
from llmpy.errors import LlmpyError

PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    log: ClassVar[list] = []  # (path, Range header) of every request, for the assertions

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.log.append((self.path, self.headers.get("Range")))
        if self.path == "/missing":
            self.send_error(404)
            return
        data, start = PAYLOAD, 0
        rng = self.headers.get("Range")
        if rng and self.path != "/norange":
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path == "/broken":  # promise everything, send half, hang up
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            return
        self.wfile.write(data[start:])


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_with_progress(server, tmp_path, capsys):
    path = download_file(f"{server}/file.txt", tmp_path / "file.txt", sha256=SHA, desc="file.txt")
    assert path.read_bytes() == PAYLOAD
    err = capsys.readouterr().err
    assert "file.txt" in err and "100%" in err
    Handler.log.clear()
    download_file(f"{server}/file.txt", tmp_path / "file.txt", sha256=SHA)  # present: no request
    assert Handler.log == []


def test_resume_partial_file(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:300_000])
    Handler.log.clear()
    path = download_file(f"{server}/f.bin", tmp_path / "f.bin", sha256=SHA, progress=False)
    assert Handler.log == [("/f.bin", "bytes=300000-")]
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()


def test_server_without_range_restarts(server, tmp_path):
    (tmp_path / "g.bin.part").write_bytes(b"garbage" * 10)
    download_file(f"{server}/norange", tmp_path / "g.bin", sha256=SHA, progress=False)
    assert (tmp_path / "g.bin").read_bytes() == PAYLOAD


def test_broken_connection_keeps_part_then_resumes(server, tmp_path):
    with pytest.raises(LlmpyError, match="run the command again"):
        download_file(f"{server}/broken", tmp_path / "h.bin", progress=False)
    assert not (tmp_path / "h.bin").exists()
    kept = (tmp_path / "h.bin.part").stat().st_size
    assert 0 < kept < len(PAYLOAD)
    download_file(f"{server}/file", tmp_path / "h.bin", sha256=SHA, progress=False)
    assert (tmp_path / "h.bin").read_bytes() == PAYLOAD


def test_checksum_failure_leaves_nothing(server, tmp_path):
    with pytest.raises(LlmpyError, match="checksum mismatch"):
        download_file(f"{server}/file.txt", tmp_path / "bad.txt", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_offline(server, tmp_path):
    with pytest.raises(LlmpyError, match="HTTP 404"):
        download_file(f"{server}/missing", tmp_path / "m.txt", progress=False)
    # a closed port on localhost: what "no network" looks like to urllib
    with pytest.raises(LlmpyError, match="no network"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x.txt", progress=False)
    assert list(tmp_path.iterdir()) == []
