"""Numba's on-disk kernel cache, dropped when any kernel source of llmpy changes.

Numba caches a compiled `cache=True` function next to its source (`__pycache__/*.nbi` index and `*.nbc`
code; or under NUMBA_CACHE_DIR, or a user-wide directory when the package directory is read-only) and
checks only the timestamp of the file the function is defined in. Our kernels inline code from other files
(llmpy/llama/rowdot.py's intrinsics, llmpy/fastmath.py's exp, quant.py's dot products), so after an edit or a
`git pull` that changes only rowdot.py, kernels.py's cached machine code would still be the old one: stale
results with no error.

This module adds what Numba leaves out. For every llmpy file that defines Numba code (`njit` or `intrinsic`
in its text) it hashes the other such files the module imports, directly or through each other (decode.py:
kernels.py, quant.py, rowdot.py, fastmath.py), and keeps these stamps in a JSON file in each cache directory.
A module whose stamp changed has its cached kernels deleted (Numba compiles them again on first use: an edit
of gpt2/kernels.py costs no Llama recompile). A cache directory that does not exist yet gets the stamps at
once (what Numba will write there is current). It runs once per process, from llmpy/__init__.py, before any
kernel is compiled or loaded (~3 ms: reading the sources). Failures to read or write (a read-only install)
are ignored: Numba then keeps its own rule.
"""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from llmpy.fileio import atomic_write_text

STAMPS = "llmpy-kernels.json"
MARKERS = (b"njit", b"intrinsic")  # a file that imports numba and has one of these defines Numba code
USES_NUMBA = re.compile(rb"^\s*(?:import|from)\s+numba\b", re.MULTILINE)
IMPORT = rb"^\s*(?:from|import)\s+%s\.([\w.]+)"  # a module of the package (%s: its name)


def kernel_sources(package):
    """{module name relative to the package ("llama.kernels"): (path, contents, names of the package's modules
    it imports)} of the .py files under `package` (a directory) that define Numba code."""
    package = Path(package)
    imports = re.compile(IMPORT % re.escape(package.name.encode()), re.MULTILINE)
    found = {}
    for p in sorted(package.rglob("*.py")):
        text = p.read_bytes()
        if USES_NUMBA.search(text) and any(m in text for m in MARKERS):
            names = {i.decode() for i in imports.findall(text)}
            found[".".join(p.relative_to(package).with_suffix("").parts)] = (p, text, names)
    return found


def dependency_stamps(sources):
    """{module: SHA-1 of the kernel modules it imports, directly or through each other (not itself: Numba
    checks a module's own file)}."""
    imports = {m: {d for d in names if d in sources and d != m} for m, (_, _, names) in sources.items()}
    stamps = {}
    for m in sources:
        seen, todo = set(), list(imports[m])
        while todo:
            d = todo.pop()
            if d not in seen and d != m:
                seen.add(d)
                todo.extend(imports[d])
        h = hashlib.sha1()
        for d in sorted(seen):
            h.update(d.encode() + b"\0" + sources[d][1] + b"\0")
        stamps[m] = h.hexdigest()
    return stamps


def cache_dirs(source_dir):
    """The directories where Numba may cache the kernels of files in source_dir: its locators' rules
    (numba/core/caching.py: in-tree __pycache__, NUMBA_CACHE_DIR, the user-wide cache), written out here so that
    `import llmpy` does not import Numba (a quarter of a second); tests/test_kernel_cache.py checks them
    against Numba's own."""
    source_dir = os.path.abspath(source_dir)
    subpath = os.path.basename(source_dir) + "_" + hashlib.sha1(source_dir.encode()).hexdigest()
    dirs = [Path(source_dir) / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        dirs.append(Path(os.environ["NUMBA_CACHE_DIR"]) / subpath)
    if sys.platform == "darwin":
        user = Path.home() / "Library" / "Caches"
    elif sys.platform.startswith("linux"):
        user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    else:
        return dirs
    return [*dirs, user / "numba" / subpath]


def drop_stale(package):
    """Delete Numba's cached kernels of `package`'s modules whose dependency stamp changed; returns the number
    of files deleted."""
    try:
        sources = kernel_sources(package)
    except OSError:
        return 0
    stamps = dependency_stamps(sources)
    deleted = 0
    for source_dir in sorted({p.parent for p, _, _ in sources.values()}):
        here = {sources[m][0].stem: stamps[m] for m in sources if sources[m][0].parent == source_dir}
        for d in cache_dirs(source_dir):
            deleted += _refresh(d, here)
    return deleted


def _refresh(directory, stamps):
    """Bring one cache directory to `stamps` ({file stem: stamp}): delete the kernels of stems whose recorded
    stamp differs (or is missing), record the new ones."""
    stamp_file = directory / STAMPS
    deleted = 0
    try:
        if directory.is_dir():
            try:
                recorded = json.loads(stamp_file.read_text())
            except (OSError, ValueError):
                recorded = {}
            if not isinstance(recorded, dict):
                recorded = {}
            stale = {stem for stem, stamp in stamps.items() if recorded.get(stem) != stamp}
            if not stale:
                return 0
            for f in directory.iterdir():
                if f.suffix in (".nbi", ".nbc") and f.name.split(".", 1)[0] in stale:
                    f.unlink(missing_ok=True)
                    deleted += 1
        elif directory.name != "__pycache__":
            return 0  # an out-of-tree cache Numba has not made: nothing stale, nothing to record
        atomic_write_text(stamp_file, json.dumps(stamps, sort_keys=True))
    except OSError:
        pass
    return deleted
