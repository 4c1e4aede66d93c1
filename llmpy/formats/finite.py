"""The check every model loader runs: are all weights finite?

A NaN or inf weight makes every output NaN: sampling then prints token 0 forever, training learns from
NaN, numba kernels divide by zero. So loaders refuse such files with an LlmpyError that names the tensor
and the first bad element, unless the caller passes allow_nonfinite=True (then a warning is issued and
the weights are returned as they are).

The check costs one float32 sum per chunk of CHUNK elements (no temporary as large as the tensor); only
a chunk whose sum is not finite (a NaN or inf, or finite values whose sum overflows) is searched
element by element. For Q8_0 (int8) tensors only the fp32 scales can be non-finite: check those.
"""

import warnings

import numpy as np

from llmpy.errors import LlmpyError

CHUNK = 1 << 20  # elements summed at a time


def first_nonfinite(a):
    """Flat index of the first NaN/inf in the float array `a`, or None when every element is finite."""
    flat = np.asarray(a).reshape(-1)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start:start + CHUNK]
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(chunk, dtype=np.float32)
        if not np.isfinite(total):
            bad = np.flatnonzero(~np.isfinite(chunk))
            if bad.size:
                return start + int(bad[0])
    return None


def check_finite(path, tensors, allow_nonfinite=False, hint="the file is corrupt: export or download it again"):
    """LlmpyError (or, with allow_nonfinite, a RuntimeWarning) if any of {name: float array} has a NaN/inf."""
    for name, a in tensors.items():
        i = first_nonfinite(a)
        if i is None:
            continue
        a = np.asarray(a)
        where = np.unravel_index(i, a.shape) if a.ndim else ()
        value = a.reshape(-1)[i]
        message = (f"{path}: tensor {name} holds a non-finite value ({value} at index {tuple(int(x) for x in where)}): "
                   f"a model with NaN or inf weights computes only NaN; {hint}")
        if not allow_nonfinite:
            raise LlmpyError(message + " (to load it anyway: --allow-nonfinite, or allow_nonfinite=True in Python)")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return
