"""Direct chunk reads for local zarr v2 arrays: the hot path of training.

zarr-python 3 spends ~2 ms of asyncio machinery per chunk read; a file read plus a
numcodecs decode of the same 1.5 MB chunk takes 0.35 ms (measured, see
experiments/results/data.md). A training sample at 1.5 deg reads 30 chunks, so this
path is what makes the loader outrun a GPU. It applies only where it is exactly
equivalent to xarray's decoding: a local v2 array, C order, floating dtype, NaN or no
fill value, no CF scale/offset, and chunks that hold whole fields (any time chunking);
anything else goes through xarray.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

_CF_PACKING = ("scale_factor", "add_offset", "missing_value", "_FillValue", "_Unsigned")


class LocalChunkReader:
    """Reads time slices of one local zarr v2 array, ``(time, *field)`` with each chunk
    spanning the whole field."""

    def __init__(self, directory: str, meta: dict[str, Any]) -> None:
        import numcodecs

        self.directory = directory
        self.shape = tuple(meta["shape"])
        self.time_chunk = int(meta["chunks"][0])
        self.chunk_shape = tuple(meta["chunks"])
        self.dtype = np.dtype(meta["dtype"])
        self.separator = meta.get("dimension_separator") or "."
        self.codecs = [numcodecs.get_codec(c) for c in (meta.get("filters") or [])]
        if meta.get("compressor"):
            self.codecs.append(numcodecs.get_codec(meta["compressor"]))
        self.tail = "".join(self.separator + "0" for _ in self.shape[1:])

    @classmethod
    def open(cls, store_path: str, name: str, ndim_field: int) -> "LocalChunkReader | None":
        """The reader for ``store_path/name``, or None where the fast path does not apply."""
        directory = os.path.join(store_path, name)
        try:
            with open(os.path.join(directory, ".zarray")) as f:
                meta = json.load(f)
            attrs: dict[str, Any] = {}
            if os.path.exists(os.path.join(directory, ".zattrs")):
                with open(os.path.join(directory, ".zattrs")) as f:
                    attrs = json.load(f)
        except (OSError, ValueError):
            return None
        fill = meta.get("fill_value")
        fill_ok = fill is None or fill == "NaN" or (isinstance(fill, float) and math.isnan(fill))
        shape, chunks = meta.get("shape", []), meta.get("chunks", [])
        if (meta.get("zarr_format") != 2 or meta.get("order") != "C" or not fill_ok
                or np.dtype(meta.get("dtype", "O")).kind != "f" or any(k in attrs for k in _CF_PACKING)
                or len(shape) != ndim_field + 1 or list(chunks[1:]) != list(shape[1:])):
            return None
        try:
            return cls(directory, meta)
        except Exception:  # an unknown codec: let zarr handle it
            return None

    def _raw(self, c: int) -> bytes | None:
        try:
            with open(os.path.join(self.directory, f"{c}{self.tail}"), "rb") as f:
                return f.read()
        except FileNotFoundError:  # never written: the fill value (NaN), like zarr
            return None

    def _chunk(self, c: int) -> np.ndarray:
        data: Any = self._raw(c)
        if data is None:
            return np.full(self.chunk_shape, np.nan, dtype=self.dtype)
        for codec in reversed(self.codecs):
            data = codec.decode(data)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.chunk_shape)

    def read(self, times: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(len(times), *field)`` float32 for sorted unique time positions, into ``out``
        if given (each ``out[k]`` C-contiguous): single-time chunks of float32 with one
        codec decode straight into it, saving a copy per field."""
        if out is None:
            out = np.empty((len(times), *self.shape[1:]), np.float32)
        direct = self.time_chunk == 1 and len(self.codecs) <= 1 and self.dtype == np.dtype(np.float32)
        cached: tuple[int, np.ndarray] | None = None
        for k, t in enumerate(times):
            c, r = divmod(int(t), self.time_chunk)
            if direct:
                raw = self._raw(c)
                if raw is None:
                    out[k] = np.nan
                elif self.codecs:
                    self.codecs[0].decode(raw, out=out[k])
                else:
                    out[k] = np.frombuffer(raw, np.float32).reshape(out[k].shape)
                continue
            if cached is None or cached[0] != c:
                cached = (c, self._chunk(c))
            out[k] = cached[1][r]
        return out
