"""download_file against a local HTTP server on 127.0.0.1 (no real network): progress, resume, checksums."""

import hashlib
import http.server
from typing import ClassVar

import pytest
from conftest import http_server

from llmpy.data import download
from llmpy.data.download import download_file
from llmpy.errors import LlmpyError

PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()
HTML = b"\n<!DOCTYPE html>\n<html><body>Rate limit exceeded</body></html>\n"
BODIES = {"/error.html": HTML, "/nolength": PAYLOAD[:1000], "/rows.jsonl": b'{"ctx": "a", "endings": []}\n[1, 2]\n'}


class Handler(http.server.BaseHTTPRequestHandler):
    log: ClassVar[list] = []  # (path, Range header) of every request, for the assertions

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.log.append((self.path, self.headers.get("Range")))
        if self.path == "/missing":
            self.send_error(404)
            return
        data, start = BODIES.get(self.path, PAYLOAD), 0
        rng = self.headers.get("Range")
        if rng and self.path == "/whole416":  # the .part is already complete
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rng and self.path != "/norange":
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            if self.path == "/badrange":  # claims 206 but sends the file from byte 0
                start = 0
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        if self.path != "/nolength":
            self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path == "/broken":  # promise everything, send half, hang up
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            return
        self.wfile.write(data[start:])


@pytest.fixture(scope="module")
def server():
    with http_server(Handler) as url:
        yield url


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


def test_html_error_page_is_refused(server, tmp_path):
    with pytest.raises(LlmpyError, match="HTML page"):
        download_file(f"{server}/error.html", tmp_path / "data.jsonl", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_range_not_honoured_restarts(server, tmp_path):
    # 206 whose Content-Range does not start where the .part ends: appending would corrupt the file
    (tmp_path / "r.bin.part").write_bytes(PAYLOAD[:1000])
    Handler.log.clear()
    download_file(f"{server}/badrange", tmp_path / "r.bin", progress=False)
    assert Handler.log == [("/badrange", "bytes=1000-"), ("/badrange", None)]
    assert (tmp_path / "r.bin").read_bytes() == PAYLOAD
    # 416 with the file's length equal to the .part: it is whole, and still checked
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD)
    download_file(f"{server}/whole416", tmp_path / "w.bin", sha256=SHA, progress=False)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    # 416 announcing another length: the .part is longer than the file, start over
    (tmp_path / "x.bin.part").write_bytes(PAYLOAD + b"extra")
    Handler.log.clear()
    download_file(f"{server}/whole416", tmp_path / "x.bin", sha256=SHA, progress=False)
    assert Handler.log == [("/whole416", f"bytes={len(PAYLOAD) + 5}-"), ("/whole416", None)]
    assert (tmp_path / "x.bin").read_bytes() == PAYLOAD


def test_sizes_announced_and_known(server, tmp_path):
    # the source says the file has another size than the server announces
    with pytest.raises(LlmpyError, match="announces 1,024,000 bytes but the file is 1,000 bytes"):
        download_file(f"{server}/file", tmp_path / "a.bin", size=1000, progress=False)
    assert list(tmp_path.iterdir()) == []
    # no Content-Length: the known size decides; 1,000 bytes arrive where 2,000 were expected
    with pytest.raises(LlmpyError, match="ended at 1,000 of 2,000 bytes"):
        download_file(f"{server}/nolength", tmp_path / "b.bin", size=2000, progress=False)
    assert not (tmp_path / "b.bin").exists()
    download_file(f"{server}/nolength", tmp_path / "c.bin", size=1000, progress=False)
    assert (tmp_path / "c.bin").read_bytes() == PAYLOAD[:1000]


def test_content_validators(server, tmp_path):
    with pytest.raises(LlmpyError, match=r"line 2 lacks the keys \['ctx', 'endings'\]"):
        download_file(f"{server}/rows.jsonl", tmp_path / "h.jsonl", validate=download.check_jsonl(["ctx", "endings"]),
                      progress=False)
    with pytest.raises(LlmpyError, match="not gzip"):
        download_file(f"{server}/file", tmp_path / "t.tar.gz", validate=download.check_tar_gz, progress=False)
    with pytest.raises(LlmpyError, match="PAR1"):
        download_file(f"{server}/file", tmp_path / "p.parquet", validate=download.check_parquet, progress=False)
    assert list(tmp_path.iterdir()) == []
    good = tmp_path / "good.parquet"
    good.write_bytes(b"PAR1" + b"\0" * 10 + b"PAR1")
    download.check_parquet(good)
    good.write_bytes(b"PAR1" + b"\0" * 10 + b"PAR")  # cut short
    with pytest.raises(LlmpyError, match="PAR1"):
        download.check_parquet(good)


def test_part_file_is_not_a_link_and_is_locked(server, tmp_path):
    import fcntl

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "l.bin.part").symlink_to(victim)
    with pytest.raises(LlmpyError, match="symbolic link"):
        download_file(f"{server}/file", tmp_path / "l.bin", progress=False)
    assert victim.read_bytes() == b"precious"
    part = tmp_path / "k.bin.part"
    with open(part, "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running download holds it
        with pytest.raises(LlmpyError, match="another process is downloading"):
            download_file(f"{server}/file", tmp_path / "k.bin", progress=False)
    download_file(f"{server}/file", tmp_path / "k.bin", sha256=SHA, progress=False)
