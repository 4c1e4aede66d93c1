"""Array-module plumbing: NumPy on the CPU, CuPy on NVIDIA GPUs.

The layers take their array module from their inputs (`xp = get_array_module(x)`), so the same
model code runs on either. This is the only module that imports cupy, and only when asked to.

What this module does not do: pick a device by itself. Callers pass arrays that already live where
they want the work done.
"""

import ctypes
import functools
import glob
import os

import numpy as np


def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def get_array_module(*arrays):
    """numpy, or cupy when any of the arrays is a CuPy array."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            return _cupy()
    return np


def scatter_add(target, indices, values):
    """target[indices[i]] += values[i], with repeated indices accumulating (np.add.at)."""
    xp = get_array_module(target)
    if xp is np:
        np.add.at(target, indices, values)
    else:
        import cupyx

        cupyx.scatter_add(target, indices, values)


# CBLAS constants
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


@functools.cache
def numpy_cblas():
    """NumPy's own BLAS as ctypes functions {dtype: gemm}, or None when it cannot be found.

    NumPy's wheels bundle OpenBLAS (scipy-openblas64) with prefixed ILP64 CBLAS symbols. Calling the
    very library np.matmul uses keeps one BLAS thread pool in the process: a second OpenBLAS (SciPy's)
    would spin its own threads against NumPy's on the same cores.
    """
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas64_*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            sgemm, dgemm = lib.scipy_cblas_sgemm64_, lib.scipy_cblas_dgemm64_
        except (OSError, AttributeError):
            continue
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        for fn, real in ((sgemm, ctypes.c_float), (dgemm, ctypes.c_double)):
            fn.restype = None
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, real, ptr, i64, ptr, i64,
                           real, ptr, i64]
        return {np.dtype(np.float32): sgemm, np.dtype(np.float64): dgemm, "lib": lib}
    return None


@functools.cache
def _blas_thread_shutdown():
    cblas = numpy_cblas()
    if cblas is None:
        return None
    try:
        fn = cblas["lib"].blas_thread_shutdown_
    except AttributeError:
        return None
    fn.restype, fn.argtypes = ctypes.c_int, []
    return fn


def park_blas_threads():
    """Stop NumPy's OpenBLAS worker threads now; the next BLAS call starts them again (~0.1 ms).

    After each call OpenBLAS's workers busy-wait for ~2^28 cycles (0.1 s) in case more work comes,
    holding the other cores. Call this before a long phase of parallel non-BLAS work (AdamW, the
    cross-entropy over 50k columns) so its threads get those cores: measured on 2 cores, AdamW over
    124M parameters takes 90 ms on parked cores and 140 ms next to a spinning worker.
    blas_thread_shutdown_ is the function OpenBLAS itself runs before fork(). Only call this from the
    thread that does the BLAS calls. A no-op when NumPy's OpenBLAS is not found.
    """
    fn = _blas_thread_shutdown()
    if fn is not None:
        fn()


OPENMP_SPINCOUNT = "0"  # GOMP_SPINCOUNT for training: idle OpenMP workers sleep at once


def limit_openmp_spinning():
    """Make Numba's OpenMP workers sleep as soon as a parallel kernel ends, unless the user chose.

    libgomp's idle workers spin for ~10 ms by default; in a training step the next thing is a GEMM
    whose OpenBLAS threads need those cores (measured: the first GEMM after AdamW took 16 ms instead
    of 6). Training's parallel kernels are few and long, so waking sleeping workers costs little.
    Call at an entry point, before the first parallel kernel runs (libgomp reads it when it loads).
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPINCOUNT


def _cblas_operand(x):
    """(transpose flag, leading dimension) of a 2-D view for row-major CBLAS, or None if neither
    axis is unit-stride."""
    item = x.itemsize
    if x.strides[1] == item and x.strides[0] % item == 0 and x.strides[0] >= item * max(1, x.shape[1]):
        return _NO_TRANS, x.strides[0] // item
    if x.strides[0] == item and x.strides[1] % item == 0 and x.strides[1] >= item * max(1, x.shape[0]):
        return _TRANS, x.strides[1] // item
    return None


def matmul_acc(c, a, b, accumulate=True):
    """c += a @ b (or c = a @ b with accumulate=False) for 2-D arrays, c a C-contiguous (M,N) array
    updated in place.

    On the CPU this is one BLAS gemm with beta=1 (or 0), so accumulating into a gradient costs no
    temporary and no extra pass over c. Operands may be transposed views: BLAS reads them as such.
    """
    xp = get_array_module(c)
    cblas = numpy_cblas() if xp is np else None
    gemm = cblas.get(c.dtype) if cblas else None
    if gemm is None or a.dtype != c.dtype or b.dtype != c.dtype or not c.flags.c_contiguous:
        if accumulate:
            c += a @ b
        else:
            xp.matmul(a, b, out=c)
        return c
    M, N = c.shape
    K = a.shape[1]
    assert a.shape == (M, K) and b.shape == (K, N), f"shapes {a.shape} @ {b.shape} do not give {c.shape}"
    if M == 0 or N == 0:
        return c
    if K == 0:
        if not accumulate:
            c.fill(0.0)
        return c
    opa, opb = _cblas_operand(a), _cblas_operand(b)
    if opa is None:
        a, opa = np.ascontiguousarray(a), (_NO_TRANS, max(1, K))
    if opb is None:
        b, opb = np.ascontiguousarray(b), (_NO_TRANS, max(1, N))
    beta = 1.0 if accumulate else 0.0
    gemm(_ROW_MAJOR, opa[0], opb[0], M, N, K, 1.0, a.ctypes.data, opa[1], b.ctypes.data, opb[1], beta,
         c.ctypes.data, max(1, N))
    return c
