"""Read PyTorch's `pytorch_model.bin` with NumPy only: facebook/opt-* and facebook/vit-mae-* ship their
weights in this format, and the library must read them without torch.

torch.save writes a zip archive: `<name>/data.pkl` pickles the state dict, each tensor as a call of
torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...) whose storage is a persistent id
("storage", <dtype>Storage, key, device, numel) naming the raw little-endian bytes in `<name>/data/<key>`.
The unpickler below resolves only those names (anything else is refused, so a checkpoint cannot run code)
and rebuilds each tensor as a strided view of its storage; tensors that share a storage (tied weights)
come back as separate copies.
"""
import collections
import pickle
import zipfile
from typing import Iterator

import numpy as np

from xformer_jax import storage

_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2", "DoubleStorage": "<f8",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _Storage:
    """A storage's dtype and its bytes in the archive, read once on first use."""

    def __init__(self, archive: zipfile.ZipFile, member: str, kind: str):
        self._archive, self._member, self.kind = archive, member, kind
        self._array = None

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.frombuffer(self._archive.read(self._member), dtype=_STORAGE_DTYPES[self.kind])
        return self._array


def _rebuild_tensor(storage_: _Storage, offset: int, size, stride, *_) -> np.ndarray:
    base = storage_.array()
    view = np.lib.stride_tricks.as_strided(base[offset:], shape=tuple(size),
                                           strides=tuple(s * base.itemsize for s in stride))
    if storage_.kind == "BFloat16Storage":  # bfloat16 bits are the top half of a float32
        return (view.astype(np.uint32) << 16).view(np.float32)
    array = np.array(view)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def _rebuild_parameter(data, *_):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._archive, self._prefix, self._path, self._storages = archive, prefix, path, {}

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{self._path}: holds {module}.{name}, which a PyTorch state dict of "
                                     "tensors does not; re-save it with save_pretrained (safetensors)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise pickle.UnpicklingError(f"{self._path}: unknown storage record {pid!r:.80}")
        key = str(pid[2])
        if key not in self._storages:
            self._storages[key] = _Storage(self._archive, f"{self._prefix}data/{key}", pid[1])
        return self._storages[key]


def iter_file(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor of a torch.save'd state dict; floating tensors come back as float32."""
    with storage.open(path, "rb") as f:
        if not zipfile.is_zipfile(f):
            raise ValueError(f"{path}: not a zip-format PyTorch checkpoint (torch < 1.6 wrote another format; "
                             "re-save it with save_pretrained)")
        with zipfile.ZipFile(f) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
            prefix = pickles[0][:-len("data.pkl")]
            if archive.namelist().count(f"{prefix}byteorder") and archive.read(f"{prefix}byteorder") != b"little":
                raise ValueError(f"{path}: big-endian checkpoints are not read")
            with archive.open(pickles[0]) as data:
                state = _Unpickler(data, archive, prefix, path).load()
            if not isinstance(state, dict):
                raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
            for name, array in state.items():
                if not isinstance(array, np.ndarray):
                    raise ValueError(f"{path}: entry {name!r} is not a tensor")
                yield name, array
