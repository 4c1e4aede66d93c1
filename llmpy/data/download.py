"""Downloads for dataset preparation: a progress bar, resume of partial files, checksums.

`download_file(url, path, sha256=None)` fetches `url` into `path` through `path + ".part"`:
- an existing `path` is kept (and checked against `sha256` when one is known), nothing is fetched;
- a leftover `.part` from an interrupted run is resumed with an HTTP Range request; a server that
  ignores Range (200 instead of 206) makes us start over;
- the finished file is checked against `sha256` (when known) before it is renamed to `path`, so a
  corrupt or truncated download is deleted and never looks complete;
- no network, a bad URL or an HTTP error: LlmpyError naming the URL and where to put the file by hand.

Uses only the standard library's urllib (plus tqdm for the bar). Not handled: authentication, mirrors.
"""

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from llmpy.errors import LlmpyError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30
PART_SUFFIX = ".part"
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
USER_AGENT = "llmpy"


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(path, sha256, url):
    if sha256 is None:
        return
    got = sha256_of(path)
    if got != sha256:
        os.unlink(path)
        raise LlmpyError(f"checksum mismatch for {url}: got sha256 {got}, expected {sha256}; the corrupt file "
                         "was deleted, run the command again (or check the URL)")


def download_file(url, path, sha256=None, progress=True, desc=None):
    """Fetch `url` into `path` (see the module docstring); returns the Path. Skips an existing file."""
    from tqdm import tqdm

    path = Path(path)
    if path.exists():
        if sha256 is not None and sha256_of(path) != sha256:
            raise LlmpyError(f"{path} exists but its sha256 is not {sha256}; delete it to download it again")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + PART_SUFFIX)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == HTTP_RANGE_NOT_SATISFIABLE and have:
            # the partial file is already whole (or longer than the remote file): let the checksum decide
            os.replace(part, path)
            _check_sha256(path, sha256, url)
            return path
        raise LlmpyError(f"downloading {url} failed: HTTP {e.code} {e.reason}; check the URL, or place the "
                         f"file at {path} by hand") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LlmpyError(f"cannot download {url} ({reason}): no network? Connect, or place the file at {path} "
                         "by hand and run the command again") from e
    with response:
        if have and response.status != HTTP_PARTIAL_CONTENT:
            have = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc or path.name, disable=not progress,
        ) as bar:
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise LlmpyError(f"the download of {url} broke off ({e}); run the command again to resume "
                                 f"from the {f.tell():,} bytes kept in {part}") from e
    if total is not None and part.stat().st_size != total:
        raise LlmpyError(f"the download of {url} ended at {part.stat().st_size:,} of {total:,} bytes; run the "
                         f"command again to resume from {part}")
    _check_sha256(part, sha256, url)
    os.replace(part, path)
    return path
