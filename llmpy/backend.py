"""Array-module plumbing: NumPy on the CPU, CuPy on NVIDIA GPUs.

The layers take their array module from their inputs (`xp = get_array_module(x)`), so the same
model code runs on either. This is the only module that imports cupy, and only when asked to.

What this module does not do: pick a device by itself. Callers pass arrays that already live where
they want the work done.
"""

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


def _as_fortran_operand(x):
    """A 2-D view as BLAS wants it: (array that is Fortran-contiguous, transpose flag)."""
    if x.flags.f_contiguous:
        return x, 0
    if x.flags.c_contiguous:
        return x.T, 1
    return np.asfortranarray(x), 0


def matmul_acc(c, a, b):
    """c += a @ b for 2-D arrays, with c a C-contiguous (M,N) array updated in place.

    On the CPU this is one BLAS gemm with beta=1, so accumulating into a gradient costs no
    temporary and no extra pass over c. Row-major c is column-major c.T, so we ask BLAS for
    c.T += b.T @ a.T, where every operand is a view, never a copy.
    """
    xp = get_array_module(c)
    if xp is not np or c.dtype not in (np.float32, np.float64):
        c += a @ b
        return c
    from scipy.linalg import blas

    assert c.flags.c_contiguous, "matmul_acc needs a C-contiguous output"
    gemm = blas.sgemm if c.dtype == np.float32 else blas.dgemm
    ct = c.T  # (N,M), Fortran-contiguous view of c
    bt, trans_b = _as_fortran_operand(b.T)
    at, trans_a = _as_fortran_operand(a.T)
    # op(x) is x for flag 0, x.T for flag 1: op(bt) = b.T and op(at) = a.T in both cases
    res = gemm(1.0, bt, at, beta=1.0, c=ct, trans_a=trans_b, trans_b=trans_a, overwrite_c=1)
    if res.ctypes.data != ct.ctypes.data:  # BLAS wrote to a copy (should not happen): put it back
        ct[...] = res
    return c
