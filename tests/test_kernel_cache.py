"""llmpy/kernel_cache.py: Numba's cached kernels are dropped when a module they inline from changes."""

import os
import subprocess
import sys
import textwrap

import pytest

from llmpy.kernel_cache import STAMPS, cache_dirs, dependency_stamps, drop_stale, kernel_sources

numba = pytest.importorskip("numba")

HELPER = """
import numba

@numba.njit(cache=True)
def scale():
    return {value}
"""
KERNEL = """
import numba
from pkg.helper import scale

@numba.njit(cache=True)
def kernel(x):
    return x * scale()
"""
PLAIN = """
import numba

@numba.njit(cache=True)
def alone(x):
    return x + 1
"""


def make_package(root, value):
    pkg = root / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text(HELPER.format(value=value))
    (pkg / "kernel.py").write_text(KERNEL)
    (pkg / "plain.py").write_text(PLAIN)
    return pkg


def call_kernel(root, drop):
    """kernel(10) in a fresh process (Numba loads its cache from disk), after drop_stale when `drop`."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(root)!r})
        if {drop}:
            from llmpy.kernel_cache import drop_stale
            drop_stale({str(root / "pkg")!r})
        from pkg.kernel import kernel
        print(kernel(10))
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


def test_a_changed_helper_module_recompiles_its_callers(tmp_path):
    pkg = make_package(tmp_path, 2)
    assert call_kernel(tmp_path, drop=True) == 20  # compiled and cached; stamps recorded
    assert (pkg / "__pycache__" / STAMPS).is_file()
    assert any(f.name.startswith("kernel.") and f.suffix == ".nbi" for f in (pkg / "__pycache__").iterdir())
    (pkg / "helper.py").write_text(HELPER.format(value=3))  # kernel.py itself is unchanged
    # what Numba alone does: the cached kernel inlined the old helper (this is the hazard)
    assert call_kernel(tmp_path, drop=False) == 20
    assert call_kernel(tmp_path, drop=True) == 30
    assert call_kernel(tmp_path, drop=True) == 30  # recorded: nothing dropped the second time


def test_only_the_dependents_of_a_change_are_dropped(tmp_path):
    pkg = make_package(tmp_path, 2)
    cache = pkg / "__pycache__"
    drop_stale(pkg)  # records the stamps in the new __pycache__
    for name in ("kernel.kernel-5.py311.nbi", "plain.alone-4.py311.nbi", "helper.scale-4.py311.nbi"):
        (cache / name).write_bytes(b"x")
    assert drop_stale(pkg) == 0
    (pkg / "helper.py").write_text(HELPER.format(value=5))
    assert drop_stale(pkg) == 1  # kernel's; helper's own file Numba checks itself; plain imports nothing
    assert sorted(f.name for f in cache.iterdir() if f.suffix == ".nbi") == [
        "helper.scale-4.py311.nbi", "plain.alone-4.py311.nbi"]


def test_dependencies_are_transitive_and_exclude_the_module_itself(tmp_path):
    pkg = make_package(tmp_path, 2)
    (pkg / "outer.py").write_text("import numba\nfrom pkg.kernel import kernel\n\n@numba.njit\ndef outer():\n"
                                  "    return kernel(1)\n")
    (pkg / "notes.py").write_text("# mentions njit but imports nothing of Numba\n")
    sources = kernel_sources(pkg)
    assert sorted(sources) == ["helper", "kernel", "outer", "plain"]
    before = dependency_stamps(sources)
    (pkg / "helper.py").write_text(HELPER.format(value=7))
    after = dependency_stamps(kernel_sources(pkg))
    changed = sorted(m for m in before if before[m] != after[m])
    assert changed == ["kernel", "outer"]


def test_llmpy_kernels_depend_on_what_they_inline():
    import llmpy

    stamps = kernel_sources(llmpy.__path__[0])
    assert {"llama.kernels", "llama.decode", "llama.rowdot", "fastmath", "gpt2.kernels"} <= set(stamps)
    assert "kernel_cache" not in stamps


def test_damaged_stamp_file_means_stale(tmp_path):
    pkg = make_package(tmp_path, 2)
    drop_stale(pkg)
    (pkg / "__pycache__" / "kernel.kernel-5.py311.nbi").write_bytes(b"x")
    (pkg / "__pycache__" / STAMPS).write_text("[not a dict")
    assert drop_stale(pkg) == 1


def test_cache_dirs_are_numbas_own(tmp_path, monkeypatch):
    from numba.core import caching, config

    pkg = make_package(tmp_path, 2)
    py_file = str(pkg / "kernel.py")

    def f():
        pass

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "nc"))
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "nc"))
    ours = cache_dirs(pkg)
    assert ours[0] == pkg / "__pycache__"
    assert str(ours[1]) == caching.UserProvidedCacheLocator(f, py_file).get_cache_path()
    assert str(ours[2]) == caching.UserWideCacheLocator(f, py_file).get_cache_path()
