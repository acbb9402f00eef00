"""Read torch ``.pt`` checkpoints (zip format) into numpy without torch, and without
unpickling arbitrary objects.

A torch zip checkpoint is ``<name>/data.pkl`` plus one raw little-endian file per storage
under ``<name>/data/<key>``. The pickle references storages through persistent ids and
rebuilds tensors with ``torch._utils._rebuild_tensor_v2``. The unpickler below resolves
only an allow-list of globals (tensor rebuild functions, storage types, ``OrderedDict``);
anything else is refused, so a malicious checkpoint cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name

    @property
    def dtype(self) -> np.dtype:
        dt = _STORAGE_DTYPES[self.name]
        if dt == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(dt)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_unused: Any) -> np.ndarray:
    """Materialise a (possibly strided) view of a flat storage as a contiguous array."""
    if not size:
        return storage[offset].copy()
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride), writeable=False)
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_unused: Any) -> np.ndarray:
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only tensors and dicts are read from checkpoints") from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
        return self._storages[key]


def load_torch_checkpoint(path: str | Path) -> Any:
    """The object saved by ``torch.save`` with tensors as read-only-safe numpy arrays."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a torch zip checkpoint (legacy non-zip .pt files are not supported)")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected exactly one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pkl[0]) as f:
            return _SafeUnpickler(f, archive, prefix).load()
