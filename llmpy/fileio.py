"""Writing files so that a crash never leaves a half-written file under the real name.

Every writer in llmpy goes through `atomic_write`: the bytes go to a temporary file in the same
directory, are flushed to disk, and only then renamed onto the target (os.replace is atomic on one
file system). On any failure the temporary file is removed and the previous file, if any, is intact.
"""

import os
import tempfile
from pathlib import Path


def atomic_write_with(path, write):
    """Call write(f) on a binary file object, then move the result onto `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path, chunks):
    """Write the chunks (bytes, or contiguous NumPy arrays: written without a copy) to `path` atomically."""
    def write(f):
        for chunk in chunks:
            f.write(chunk)
    return atomic_write_with(path, write)


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
