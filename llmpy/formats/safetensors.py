"""The safetensors format (Hugging Face), read and written here without the `safetensors` package.

Layout:
    8 bytes   N, the header length, little-endian uint64
    N bytes   JSON: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
              "__metadata__": {"key": "value"}}  (optional, strings only); padded with spaces
    the rest  the tensors' bytes, little-endian, C order; offsets are relative to the end of the header

`read_safetensors` memory-maps the file and returns NumPy arrays (read-only views); BF16 tensors, which
NumPy has no type for, come back widened to float32 unless raw_bf16=True (then uint16 bit patterns).
`write_safetensors` writes through a temporary file and a rename.

Every header field is checked (types, sizes, offsets inside the data section) and a bad one is an LlmpyError,
as is a file of another kind (llmpy.formats.sniff). The arrays are views of a read-only memory map: a file
modified in place while mapped can kill the process with SIGBUS; llmpy's loaders copy what they keep
(llmpy.gpt2.hf.load_hf_dir converts into a new array), and llmpy's writers replace files atomically.

Not handled: F8 types, big-endian hosts, files over 2**63 bytes.
"""

import json
import math
import struct
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write
from llmpy.formats import sniff
from llmpy.formats.llmc import bf16_to_fp32, fp32_to_bf16

HEADER_SIZE_BYTES = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation refuses larger headers too
ALIGN = 8
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
NUMPY_TO_DTYPE = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}  # uint16 means U16
HINT = "the file is not a valid .safetensors file (truncated or corrupted?): download or export it again"


def _fail(path, what):
    return LlmpyError(f"{path}: {what}; {HINT}")


def read_header(path):
    """(header dict without __metadata__, metadata dict, data start offset, file size)."""
    path = Path(path)
    sniff.check_kind(path, ("safetensors",), "a safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE_BYTES)
            if len(head) < HEADER_SIZE_BYTES:
                raise _fail(path, f"{size} bytes, too short for the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or HEADER_SIZE_BYTES + n > size:
                raise _fail(path, f"header length {n} does not fit the {size}-byte file")
            raw = f.read(n)
    except OSError as e:
        raise LlmpyError(f"cannot read {path}: {e.strerror}") from e
    if len(raw) != n:
        raise _fail(path, "the file changed while it was read")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"the header is not JSON ({e})") from e
    except RecursionError:
        raise _fail(path, "the header is JSON nested too deeply to be a safetensors header") from None
    if not isinstance(header, dict):
        raise _fail(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "__metadata__ is not an object of strings")
    return header, metadata, HEADER_SIZE_BYTES + n, size


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(path, name, info, data_size):
    """(dtype name, shape, begin, end) of one header entry, every field checked."""
    ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
          and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
          and all(_is_int(x) and x >= 0 for x in info["shape"] + info["data_offsets"]))
    if not ok:
        raise _fail(path, f"tensor {name!r} has a malformed entry {str(info)[:200]}: it needs a dtype string, a "
                          "shape of non-negative integers and two integer data_offsets")
    dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
    if dtype_name not in DTYPES:
        raise LlmpyError(f"{path}: tensor {name!r} has dtype {dtype_name[:20]}, which this reader does not handle "
                         f"(it reads {', '.join(DTYPES)})")
    nbytes = math.prod(shape) * np.dtype(DTYPES[dtype_name]).itemsize  # Python ints: no overflow
    if not begin <= end <= data_size or end - begin != nbytes:
        raise _fail(path, f"tensor {name!r} ({dtype_name} {shape}) has data offsets [{begin}, {end}) that do "
                          f"not match its size or the {data_size}-byte data section")
    return dtype_name, shape, begin, end


def read_safetensors(path, raw_bf16=False):
    """({name: np.ndarray}, metadata) of a .safetensors file, memory-mapped (read-only).

    Values are not checked (a model loader checks that its weights are finite: llmpy.formats.finite).
    """
    header, metadata, start, size = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(size - start,)) if size > start else \
        np.zeros(0, dtype=np.uint8)
    tensors = {}
    for name, info in header.items():
        dtype_name, shape, begin, end = _entry(path, name, info, data.size)
        array = data[begin:end].view(DTYPES[dtype_name]).reshape(shape)
        if dtype_name == "BF16" and not raw_bf16:
            array = bf16_to_fp32(array)
        tensors[name] = array
    return tensors, metadata


def write_safetensors(path, tensors, metadata=None, bf16=()):
    """Write {name: array} as a .safetensors file; names in `bf16` are stored as BF16 (rounded from fp32)."""
    path = Path(path)
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if name in bf16:
            blob, dtype_name = fp32_to_bf16(array.astype(np.float32)).astype("<u2"), "BF16"
        else:
            key = array.dtype if array.dtype.itemsize == 1 else array.dtype.newbyteorder("<")
            dtype_name = NUMPY_TO_DTYPE.get(key)
            if dtype_name is None:
                raise LlmpyError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store")
            blob = np.ascontiguousarray(array, dtype=DTYPES[dtype_name])
        nbytes = blob.nbytes
        header[name] = {"dtype": dtype_name, "shape": list(array.shape), "data_offsets": [offset, offset + nbytes]}
        blobs.append(blob)
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(HEADER_SIZE_BYTES + len(raw)) % ALIGN)  # the data section starts 8-byte aligned
    atomic_write(path, [struct.pack("<Q", len(raw)), raw, *(np.ascontiguousarray(b) for b in blobs)])
    return path
