"""Downloads for dataset preparation: a progress bar, resume of partial files, and checks of what came.

`download_file(url, path, sha256=None, size=None, validate=None)` fetches `url` into `path` through
`path + ".part"`:
- an existing `path` is kept (and checked against `sha256` when one is known), nothing is fetched;
- a leftover `.part` from an interrupted run is resumed with an HTTP Range request, but only when the
  server answers 206 with a Content-Range starting exactly where the `.part` ends; any other answer
  (200, another start, 416 without the matching length) makes us start over from byte 0;
- the bytes received must add up to the size the server announced (Content-Length / Content-Range) and
  to `size` when the caller knows it; a connection that breaks off keeps the `.part` for the next run;
- before the `.part` is renamed to `path` its content is checked: the `sha256` when known, not an HTML
  page (what error and login pages are), and `validate(path)` when given (check_jsonl, check_tar_gz,
  check_parquet below): a file that fails is deleted, so a wrong download never looks complete;
- no network, a bad URL or an HTTP error: LlmpyError naming the URL and where to put the file by hand.

The `.part` is opened without following symbolic links and locked (flock), so a link planted under that
name is refused and a second download of the same file stops instead of writing into the first one's.
Uses only the standard library's urllib (plus tqdm for the bar). Not handled: authentication, mirrors.
"""

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import re
import stat
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from llmpy.errors import LlmpyError

try:
    import fcntl
except ImportError:  # not on Windows: downloads are then not locked against each other
    fcntl = None

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30
PART_SUFFIX = ".part"
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
USER_AGENT = "llmpy"
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
HTML_STARTS = (b"<!doctype html", b"<html")
SNIFF_BYTES = 512
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"  # at the start and at the very end of every parquet file
HF = "https://huggingface.co"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# content checks: each raises LlmpyError saying what the file is instead


def check_not_html(path):
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES).lstrip().lower()
    if head.startswith(HTML_STARTS):
        raise LlmpyError("it is an HTML page (the server's error or login page), not the data file")


def check_jsonl(keys):
    """A validator: every non-empty line is a JSON object holding all of `keys`."""
    def check(path):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise LlmpyError(f"line {lineno} is not JSON ({e})") from e
                missing = [k for k in keys if not isinstance(record, dict) or k not in record]
                if missing:
                    raise LlmpyError(f"line {lineno} lacks the keys {missing}")
    return check


def check_tar_gz(path):
    """A gzip file whose tar archive opens and lists a first member (the rest is read when unpacking)."""
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            raise LlmpyError("it is not gzip-compressed")
    try:
        with tarfile.open(path, "r:gz") as tar:
            if tar.next() is None:
                raise LlmpyError("the tar archive is empty")
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as e:
        raise LlmpyError(f"it is not a readable tar.gz archive ({e})") from e


def check_parquet(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(len(PARQUET_MAGIC))
        f.seek(max(0, size - len(PARQUET_MAGIC)))
        tail = f.read()
    if size < 2 * len(PARQUET_MAGIC) or head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        raise LlmpyError("it is not a parquet file (no PAR1 magic at both ends)")


def check_sha256(path, sha256):
    if sha256 is not None and (got := sha256_of(path)) != sha256:
        raise LlmpyError(f"checksum mismatch: got sha256 {got}, expected {sha256}")


def verify(path, url, sha256=None, validate=None):
    """Run the content checks on a finished download; a failing file is deleted and named in the error."""
    try:
        check_sha256(path, sha256)
        check_not_html(path)
        if validate is not None:
            validate(path)
    except (LlmpyError, UnicodeDecodeError) as e:
        os.unlink(path)
        raise LlmpyError(f"the download of {url} is not the expected file: {e}; it was deleted, run the "
                         "command again (or check the URL)") from e


def hf_files(repo, folder="", base=HF):
    """{path: (size, sha256 or None)} of the files under `folder` of a Hugging Face dataset repo (one API request).

    For files kept in Git LFS (every large data file) the listing carries the content's sha256 (`lfs.oid`)
    and size, which is what lets downloads from the Hub be checked. LlmpyError when the listing fails.
    """
    url = f"{base}/api/datasets/{repo}/tree/main/{folder}".rstrip("/")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}),
                                    timeout=TIMEOUT_S) as response:
            entries = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise LlmpyError(f"cannot list {url} ({getattr(e, 'reason', e)}): no network?") from e
    files = {}
    for e in entries:
        if not isinstance(e, dict) or e.get("type") != "file" or "path" not in e:
            continue
        lfs = e.get("lfs") or {}
        sha = lfs.get("oid")
        files[e["path"]] = (lfs.get("size", e.get("size")), sha if SHA256_HEX.fullmatch(str(sha)) else None)
    return files


# ---------------------------------------------------------------------------------------------------------
# the download


@contextlib.contextmanager
def open_part(part):
    """The `.part` file opened for appending: never through a symbolic link, locked against a second writer."""
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        raise LlmpyError(f"cannot open {part} ({e.strerror or e}); if it is a symbolic link or not a file, "
                         "delete it") from e
    with os.fdopen(fd, "r+b") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LlmpyError(f"{part} is not a regular file; delete it")
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                raise LlmpyError(f"another process is downloading into {part}; wait for it to finish") from e
        try:
            yield f
        except BaseException:
            if os.fstat(fd).st_size == 0:  # nothing worth resuming: leave no trace
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
            raise


def open_url(url, path, have, hint):
    """Request url from byte `have` on: (response or None, the byte its body starts at, the full size or None).

    None for the response means the `.part` already holds the whole file (416 with a matching length).
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == HTTP_RANGE_NOT_SATISFIABLE and have:
            m = UNSATISFIED_RANGE.fullmatch(e.headers.get("Content-Range", "").strip())
            e.close()
            if m and int(m.group(1)) == have:
                return None, have, have
            return open_url(url, path, 0, hint)  # the .part is longer than the file: start over
        raise LlmpyError(f"downloading {url} failed: HTTP {e.code} {e.reason}; check the URL, or place the "
                         f"file at {path} by hand{hint}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LlmpyError(f"cannot download {url} ({reason}): no network? Connect, or place the file at {path} "
                         f"by hand{hint} and run the command again") from e
    length = response.headers.get("Content-Length")
    if have and response.status == HTTP_PARTIAL_CONTENT:
        m = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if m and int(m.group(1)) == have:
            total = int(m.group(3)) if m.group(3) != "*" else None
            if total is None and length is not None:
                total = have + int(length)
            return response, have, total
        response.close()
        return open_url(url, path, 0, hint)  # not the range we asked for: start over
    # 200: the whole file from byte 0 (also when we asked for a range: the server ignored it)
    return response, 0, int(length) if length is not None else None


def download_file(url, path, sha256=None, size=None, validate=None, progress=True, desc=None, hint=""):
    """Fetch `url` into `path` (see the module docstring); returns the Path. Skips an existing file.

    size: the expected byte count when the source publishes it; validate(path): a content check raising
    LlmpyError; hint: appended to the "place the file by hand" advice (e.g. ", or pass --input FILE").
    """
    from tqdm import tqdm

    path = Path(path)
    if path.exists():
        if sha256 is not None and sha256_of(path) != sha256:
            raise LlmpyError(f"{path} exists but its sha256 is not {sha256}; delete it to download it again")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + PART_SUFFIX)
    with open_part(part) as f:
        have = os.fstat(f.fileno()).st_size
        if size is not None and have > size:
            have = 0  # longer than the file can be
        response, have, total = open_url(url, path, have, hint)
        if size is not None and total is not None and total != size:
            if response is not None:
                response.close()
            raise LlmpyError(f"{url} announces {total:,} bytes but the file is {size:,} bytes; the source changed "
                             f"or the URL is wrong: check it, or place the file at {path} by hand{hint}")
        f.truncate(have)
        f.seek(have)
        if response is not None:
            with response, tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                                desc=desc or path.name, disable=not progress) as bar:
                try:
                    for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as e:
                    raise LlmpyError(f"the download of {url} broke off ({e}); run the command again to resume "
                                     f"from the {f.tell():,} bytes kept in {part}") from e
        f.flush()
        got, expected = f.tell(), total if total is not None else size
        if expected is not None and got != expected:
            raise LlmpyError(f"the download of {url} ended at {got:,} of {expected:,} bytes; run the command "
                             f"again to resume from {part}")
        verify(part, url, sha256, validate)  # still holding the lock: nobody writes while we check
        os.replace(part, path)
    return path
