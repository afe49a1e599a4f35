"""Read save_pretrained checkpoints with NumPy only (no torch at run time): safetensors, and PyTorch's
pytorch_model.bin as facebook/opt-* and facebook/vit-mae-* ship it (`torch_pickle`).

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then raw little-endian bytes. bfloat16 has no NumPy dtype: its bits are the top half
of a float32, so it is widened exactly by a 16-bit shift.
"""
import json
import struct
from typing import Iterator

import numpy as np

from xformer_jax import storage
from xformer_jax.convert import torch_pickle

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TORCH_INDEX_FILE = "pytorch_model.bin.index.json"
TORCH_SINGLE_FILE = "pytorch_model.bin"

_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_header(path: str) -> tuple[dict, int]:
    """The JSON header of one safetensors file and the byte offset where the data starts."""
    with storage.open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + length


def _decode(buffer: bytes, dtype: str, shape: list, path: str, name: str) -> np.ndarray:
    if dtype == "BF16":
        bits = np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
    array = np.frombuffer(buffer, dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<")).reshape(shape)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def iter_file(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor of one file; floating tensors come back as float32."""
    header, start = read_header(path)
    with storage.open(path, "rb") as f:
        for name, info in header.items():
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            buffer = f.read(end - begin)
            if len(buffer) != end - begin:
                raise ValueError(f"{path}: tensor {name!r} is truncated ({len(buffer)} of {end - begin} bytes)")
            yield name, _decode(buffer, info["dtype"], info["shape"], path, name)


def checkpoint_files(hf_dir: str) -> list[str]:
    """The weight files of a save_pretrained directory: one file, or the shards of its index; safetensors
    first, else pytorch_model.bin."""
    for index_name, single_name in ((INDEX_FILE, SINGLE_FILE), (TORCH_INDEX_FILE, TORCH_SINGLE_FILE)):
        index = storage.join(hf_dir, index_name)
        if storage.exists(index):
            weight_map = storage.read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map' object")
            files = [storage.join(hf_dir, name) for name in sorted(set(weight_map.values()))]
            missing = [p for p in files if not storage.exists(p)]
            if missing:
                raise FileNotFoundError(f"{index} names shard files that are missing: {missing}")
            return files
        single = storage.join(hf_dir, single_name)
        if storage.exists(single):
            return [single]
    raise FileNotFoundError(f"{hf_dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found (nor PyTorch's "
                            f"{TORCH_SINGLE_FILE} / {TORCH_INDEX_FILE})")


def load_tensors(hf_dir: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a checkpoint directory, and the file each came from (for error messages)."""
    tensors, origin = {}, {}
    for path in checkpoint_files(hf_dir):
        read = iter_file if path.endswith(".safetensors") else torch_pickle.iter_file
        for name, array in read(path):
            if name in tensors:
                raise ValueError(f"{path}: tensor {name!r} also appears in {origin[name]}")
            tensors[name], origin[name] = array, path
    return tensors, origin
