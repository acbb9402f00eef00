"""Opening forecast, truth and climatology stores in WeatherBench2 layout, lazily.

Everything is put on one canonical grid: latitude ascending (south to north, as SPEC.md)
and longitude in ``[0, 360)`` ascending. Nothing is loaded here: arrays stay lazy, and the
evaluator reads one init time at a time.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

ENSEMBLE_DIMS: tuple[str, ...] = ("member", "realization", "number")
SPATIAL_DIMS: tuple[str, ...] = ("latitude", "longitude")


def open_store(path_or_ds: str | Path | xr.Dataset) -> xr.Dataset:
    """An xarray Dataset from a zarr store (directory, ``.zarr``, ``gs://``) or a NetCDF file."""
    if isinstance(path_or_ds, xr.Dataset):
        return path_or_ds
    p = str(path_or_ds)
    remote = "://" in p
    if not remote and not Path(p).exists():
        raise FileNotFoundError(f"no such store: {p}")
    if remote or p.rstrip("/").endswith(".zarr") or Path(p).is_dir():
        # chunks=None: lazily indexed arrays (no dask), so isel reads only what it selects.
        try:
            return xr.open_zarr(p, chunks=None, decode_timedelta=True, consolidated=True)
        except (ValueError, KeyError):  # no consolidated metadata
            return xr.open_zarr(p, chunks=None, decode_timedelta=True, consolidated=False)
    return xr.open_dataset(p, decode_timedelta=True)


def canonical_grid(ds: xr.Dataset, what: str) -> xr.Dataset:
    """Sort latitude south to north and wrap longitude to ``[0, 360)`` ascending."""
    for d in SPATIAL_DIMS:
        if d not in ds.dims:
            raise ValueError(f"{what}: missing dimension {d!r} (dims: {sorted(map(str, ds.dims))})")
    lon = np.mod(ds["longitude"].values.astype(np.float64), 360.0)
    ds = ds.assign_coords(longitude=lon)
    if np.any(np.diff(ds["longitude"].values) <= 0):
        ds = ds.sortby("longitude")
    if np.any(np.diff(ds["latitude"].values) <= 0):
        ds = ds.sortby("latitude")
    return ds


def check_same_grid(a: xr.Dataset, b: xr.Dataset, what_a: str, what_b: str) -> None:
    """Raise ``ValueError`` unless both datasets share latitudes and longitudes (1e-6 degree)."""
    for d in SPATIAL_DIMS:
        x, y = a[d].values, b[d].values
        if x.shape != y.shape or not np.allclose(x, y, atol=1e-6):
            raise ValueError(
                f"mismatched grid: {what_a} has {x.size} {d}s "
                f"[{x.min():g}..{x.max():g}], {what_b} has {y.size} [{y.min():g}..{y.max():g}]; "
                "regrid one of them first")


def check_regular_longitudes(lon: np.ndarray) -> None:
    """Spectra need equally spaced longitudes covering the whole circle."""
    step = 360.0 / lon.size
    if not np.allclose(np.diff(lon), step, atol=1e-6):
        raise ValueError(f"longitudes must be equally spaced over the full circle ({lon.size} points, "
                         f"step {step:g} degrees)")


def prepare_forecast(ds: xr.Dataset) -> xr.Dataset:
    """Forecast store in WB2 forecast layout: ``time`` (init), ``prediction_timedelta``, optional
    ensemble dim (``member``/``realization``/``number``, renamed ``member``), lat, lon, level."""
    for d in ("time", "prediction_timedelta"):
        if d not in ds.dims:
            raise ValueError(f"forecast store: missing dimension {d!r} (dims: {sorted(map(str, ds.dims))}); "
                             "expected WeatherBench2 forecast layout")
    for d in ENSEMBLE_DIMS[1:]:
        if d in ds.dims and "member" not in ds.dims:
            ds = ds.rename({d: "member"})
    if not np.issubdtype(ds["prediction_timedelta"].dtype, np.timedelta64):
        raise ValueError("forecast store: prediction_timedelta must be timedelta64")
    return canonical_grid(ds, "forecast store")


def prepare_truth(ds: xr.Dataset) -> xr.Dataset:
    """Truth store in WB2 layout: ``time``, lat, lon (either order), optional level."""
    if "time" not in ds.dims:
        raise ValueError(f"truth store: missing dimension 'time' (dims: {sorted(map(str, ds.dims))})")
    ds = canonical_grid(ds, "truth store")
    if np.any(np.diff(ds["time"].values) <= np.timedelta64(0, "ns")):
        ds = ds.sortby("time")
    return ds


def has_level(da: xr.DataArray) -> bool:
    return "level" in da.dims


def read(da: xr.DataArray, order: tuple[str, ...], **isel: Any) -> np.ndarray:
    """Load ``da.isel(**isel)`` as float64 with dims in ``order`` (absent names skipped)."""
    sub = da.isel(**isel) if isel else da
    dims = [d for d in order if d in sub.dims]
    extra = set(sub.dims) - set(dims)
    if extra:
        raise ValueError(f"{da.name}: unexpected dimension(s) {sorted(extra)}")
    return np.asarray(sub.transpose(*dims).values, dtype=np.float64)


class ByteLRU:
    """A least-recently-used cache bounded by the total bytes of its numpy values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._d: collections.OrderedDict[Any, np.ndarray] = collections.OrderedDict()
        self._bytes = 0

    def get(self, key: Any) -> np.ndarray | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: Any, value: np.ndarray) -> None:
        if key in self._d:
            self._bytes -= self._d.pop(key).nbytes
        self._d[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes and len(self._d) > 1:
            _, old = self._d.popitem(last=False)
            self._bytes -= old.nbytes
