"""Write safetensors checkpoints with NumPy only: one file, or shards plus transformers' index json.

The layout is the one `safetensors_io` reads: an 8-byte little-endian header length, the JSON header
(padded with spaces to a multiple of 8 bytes, as the safetensors library does), then the tensors'
little-endian bytes back to back in header order. bfloat16 is float32 rounded to nearest even
(ml_dtypes, which JAX ships). Files are written whole (`storage.writer`: a temporary file renamed, or
one upload to a bucket), so a crash never leaves a file that looks complete.
"""
import json
import re
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from xformer_jax import storage
from xformer_jax.convert.safetensors_io import INDEX_FILE, SINGLE_FILE

DTYPES = ("float32", "bfloat16")
_SAFETENSORS_DTYPE = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float16): "F16",
                      np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.bool_): "BOOL"}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {DTYPES}")
    return name


def parse_size(size) -> int:
    """Bytes from an int or a string such as "5GB", "500MB", "20KB" (transformers' max_shard_size)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.match(str(size))
        if not match:
            raise ValueError(f"max shard size {size!r} is not a size such as 5GB, 500MB or 20KB")
        value = int(float(match[1]) * _UNITS[(match[2] or "").upper()])
    if value < 1:
        raise ValueError(f"max shard size {size!r} must be positive")
    return value


def cast(array: np.ndarray, dtype: str) -> np.ndarray:
    """Floating tensors to the export dtype; integer / bool tensors unchanged."""
    array = np.asarray(array)
    if array.dtype.kind != "f" and array.dtype != np.dtype(ml_dtypes.bfloat16):
        return array
    target = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    return _contiguous(array.astype(np.float32, copy=False).astype(target, copy=False))


def _stored_dtype(array: np.ndarray, dtype: str) -> np.dtype:
    floating = array.dtype.kind == "f" or array.dtype == np.dtype(ml_dtypes.bfloat16)
    if not floating:
        return array.dtype
    return np.dtype(np.float32) if dtype == "float32" else np.dtype(ml_dtypes.bfloat16)


def write_file(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] = None,
               dtype: str = "float32") -> int:
    """One safetensors file, floating tensors cast to `dtype` one at a time as they are written (so an
    export holds at most one cast copy); returns the bytes of tensor data written."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, array in tensors.items():
        array = np.asarray(array)
        stored = _stored_dtype(array, dtype)
        if stored not in _SAFETENSORS_DTYPE:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be written")
        nbytes = int(np.prod(array.shape, dtype=np.int64)) * stored.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPE[stored], "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with storage.writer(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for array in tensors.values():
            data = cast(array, dtype)
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            f.write(data.tobytes())
    return offset


def shard_plan(tensors: Mapping[str, np.ndarray], max_bytes: int, dtype: str = "float32") -> list[list[str]]:
    """Names per shard, in order: a shard closes before the tensor that would take it past max_bytes
    (a tensor larger than max_bytes gets a shard of its own, as in transformers)."""
    shards, current, size = [], [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        nbytes = int(np.prod(array.shape, dtype=np.int64)) * _stored_dtype(array, dtype).itemsize
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current or not shards:
        shards.append(current)
    return shards


def save(directory: str, tensors: Mapping[str, np.ndarray], max_shard_size="5GB", dtype: str = "float32") -> list[str]:
    """model.safetensors, or model-0000k-of-0000n.safetensors + model.safetensors.index.json when the
    tensors exceed max_shard_size; floating tensors stored as `dtype`. Stale checkpoint files of an
    earlier export are removed. Returns the file names written."""
    check_dtype(dtype)
    storage.makedirs(directory)
    for name in storage.listdir(directory) if storage.isdir(directory) else ():
        if name == INDEX_FILE or (name.startswith("model") and name.endswith(".safetensors")):
            storage.remove(storage.join(directory, name))
    metadata = {"format": "pt"}  # what transformers requires of a safetensors checkpoint
    plan = shard_plan(tensors, parse_size(max_shard_size), dtype)
    if len(plan) == 1:
        write_file(storage.join(directory, SINGLE_FILE), tensors, metadata, dtype)
        return [SINGLE_FILE]
    files, weight_map, total = [], {}, 0
    for k, names in enumerate(plan, start=1):
        file = f"model-{k:05d}-of-{len(plan):05d}.safetensors"
        total += write_file(storage.join(directory, file), {n: tensors[n] for n in names}, metadata, dtype)
        weight_map.update({n: file for n in names})
        files.append(file)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    storage.write_json(storage.join(directory, INDEX_FILE), index, indent=2)
    return files + [INDEX_FILE]
