"""Writing files so that a crash never leaves a half-written file under the real name (and where llmpy's cache
is: cache_dir).

Every writer in llmpy goes through `atomic_open` (or its wrappers `atomic_write` / `atomic_write_with`):
the bytes go to a temporary file that `tempfile.mkstemp` creates in the same directory (an unpredictable
name, opened with O_EXCL, so a file or symlink planted there is never followed), are flushed to disk, and
only then renamed onto the target (os.replace is atomic on one file system). On any failure the
temporary file is removed and the previous file, if any, is intact. Two writers of one target each write
their own temporary file; the last rename wins and the target is always one whole file.

mkstemp creates its file with mode 0600; before the rename it gets the mode any other new file would
get, 0666 minus the process umask, so shards and checkpoints are as readable as the user's other files.
"""

import contextlib
import os
import tempfile
from pathlib import Path

FILE_MODE = 0o666  # what open() asks for; the umask takes bits away


def current_umask():
    """The process umask, read without changing it where Linux allows (/proc/self/status, thread-safe).

    Elsewhere the classic os.umask(0) / os.umask(old) pair, which briefly changes the process-wide mask.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_open(path):
    """`with atomic_open(path) as f:` a binary file that becomes `path` only when the block ends cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_with(path, write):
    """Call write(f) on a binary file object, then move the result onto `path` atomically."""
    with atomic_open(path) as f:
        write(f)
    return Path(path)


def atomic_write(path, chunks):
    """Write the chunks (bytes, or contiguous NumPy arrays: written without a copy) to `path` atomically."""
    def write(f):
        for chunk in chunks:
            f.write(chunk)
    return atomic_write_with(path, write)


def atomic_write_text(path, text, encoding="utf-8"):
    """Write a str to `path` atomically."""
    return atomic_write(path, [text.encode(encoding)])


def cache_dir(*parts):
    """Where llmpy keeps what it downloads or makes for later runs: $XDG_CACHE_HOME/llmpy/PARTS, else
    ~/.cache/llmpy/PARTS (datasets under data/, models under models/)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "llmpy", *parts)


def read_head(path, nbytes, what):
    """(the first nbytes of path, the file's size); an unreadable file is an LlmpyError naming it as `what`."""
    from llmpy.errors import LlmpyError

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return f.read(nbytes), size
    except OSError as e:
        raise LlmpyError(f"cannot read {what} {path}: {e.strerror or e}") from e
