"""Climatologies indexed by day of year and hour of day (WeatherBench2's convention).

Two sources, one interface ``fields(variable, valid_times, levels) -> (T, [level,] lat, lon)``:

* ``TruthClimatology``: computed from the truth store over a chosen period, so users do not
  need WB2's climatology. For a target (day of year ``d``, hour ``h``) it is the mean of all
  truth samples in the period at hour ``h`` whose day of year is within ``window_days // 2``
  of ``d`` (circular distance on a 366-day year). The default 61-day window is WB2's
  smoothing choice for its 1990-2019 ERA5 climatology; it also keeps anomalies informative
  when the period is short (with a window of 1 day and a single year, truth would equal
  its own climatology and ACC would be undefined). Fields are computed on demand, for the
  (day, hour) pairs that valid times need, streaming over the period's samples, and cached
  in a byte-bounded LRU.
* ``StoreClimatology``: a WB2 climatology zarr (dims ``dayofyear`` 1..366, ``hour``, lat,
  lon[, level]), e.g. ``gs://weatherbench2/datasets/era5-hourly-climatology/...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from mosaic_jax.evaluation import stores

_ORDER = ("level", "latitude", "longitude")


def _doy_hour(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = pd.DatetimeIndex(times)
    return np.asarray(idx.day_of_year), np.asarray(idx.hour)


def _level_sel(da: xr.DataArray, levels: Sequence[float] | None) -> xr.DataArray:
    if levels is None or "level" not in da.dims:
        return da
    return da.sel(level=list(levels))


class TruthClimatology:
    """Climatology computed from the truth store (see the module docstring)."""

    def __init__(self, truth: xr.Dataset, period: tuple[str, str] | None = None, window_days: int = 61,
                 cache_bytes: int = 512 * 2**20, read_batch: int = 32, preload_bytes: int = 256 * 2**20) -> None:
        if window_days < 1:
            raise ValueError(f"climatology window must be at least 1 day, got {window_days}")
        self.truth = truth
        times = truth["time"].values
        if period is not None:
            start, end = (np.datetime64(pd.Timestamp(p)) for p in period)
            if end < start:
                raise ValueError(f"climatology period: end {period[1]} is before start {period[0]}")
            keep = np.flatnonzero((times >= start) & (times <= end))
        else:
            keep = np.arange(times.size)
        if keep.size == 0:
            raise ValueError(f"climatology period {period} contains no truth time "
                             f"(truth covers {times.min()} .. {times.max()})")
        self.indices = keep
        self.period = tuple(str(np.datetime_as_string(times[j], unit="h")) for j in (keep[0], keep[-1]))
        self.doy, self.hour = _doy_hour(times[keep])
        self.window_days = int(window_days)
        self.read_batch = read_batch
        self.preload_bytes = preload_bytes
        self._cache = stores.ByteLRU(cache_bytes)
        self._preloaded: dict[tuple, np.ndarray] = {}

    def describe(self) -> str:
        return (f"computed from the truth store over {self.period[0]} .. {self.period[1]}: mean by hour of day "
                f"over a {self.window_days}-day window of days of year")

    def _field(self, variable: str, doy: int, hour: int, levels: Sequence[float] | None) -> np.ndarray:
        key = (variable, doy, hour, None if levels is None else tuple(levels))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        dist = np.abs(self.doy - doy)
        dist = np.minimum(dist, 366 - dist)
        sel = self.indices[(self.hour == hour) & (dist <= self.window_days // 2)]
        if sel.size == 0:
            raise ValueError(f"climatology: no truth sample at hour {hour} within {self.window_days // 2} days "
                             f"of day of year {doy} in the period {self.period}; widen the period or window")
        da = _level_sel(self.truth[variable], levels)
        samples = self._preload(variable, levels, da)
        if samples is not None:  # a short period: everything is in memory
            pos = np.searchsorted(self.indices, sel)
            field = samples[pos].sum(axis=0, dtype=np.float64) / sel.size
        else:  # stream the period's samples for this (day, hour)
            total = None
            for i in range(0, sel.size, self.read_batch):
                chunk = stores.read(da, ("time",) + _ORDER, time=sel[i:i + self.read_batch]).sum(axis=0)
                total = chunk if total is None else total + chunk
            field = total / sel.size
        self._cache.put(key, field)
        return field

    def _preload(self, variable: str, levels: Sequence[float] | None, da: xr.DataArray) -> np.ndarray | None:
        """The whole period of one variable as float32, if it fits ``preload_bytes`` (one read, not
        one per (day, hour): for short periods the per-read overhead dominates)."""
        key = (variable, None if levels is None else tuple(levels))
        if key not in self._preloaded:
            n_bytes = 4 * self.indices.size * int(np.prod([da.sizes[d] for d in da.dims if d != "time"]))
            held = sum(a.nbytes for a in self._preloaded.values())
            if held + n_bytes > self.preload_bytes:  # one budget for all variables
                return None
            self._preloaded[key] = stores.read(da, ("time",) + _ORDER, time=self.indices).astype(np.float32)
        return self._preloaded[key]

    def fields(self, variable: str, valid_times: np.ndarray, levels: Sequence[float] | None = None) -> np.ndarray:
        """Climatology at each valid time: ``(T, [level,] lat, lon)`` float64."""
        doy, hour = _doy_hour(valid_times)
        return np.stack([self._field(variable, int(d), int(h), levels) for d, h in zip(doy, hour, strict=True)])


class StoreClimatology:
    """A WeatherBench2 climatology store (``dayofyear``, ``hour``, lat, lon[, level])."""

    def __init__(self, path_or_ds: str | Path | xr.Dataset, truth: xr.Dataset | None = None) -> None:
        ds = stores.open_store(path_or_ds)
        for d in ("dayofyear", "hour"):
            if d not in ds.dims:
                raise ValueError(f"climatology store: missing dimension {d!r} (dims: {sorted(map(str, ds.dims))})")
        self.ds = stores.canonical_grid(ds, "climatology store")
        if truth is not None:
            stores.check_same_grid(self.ds, truth, "climatology store", "truth store")
        self.source = str(path_or_ds) if not isinstance(path_or_ds, xr.Dataset) else "dataset"

    def describe(self) -> str:
        return f"WeatherBench2 climatology store {self.source}"

    def fields(self, variable: str, valid_times: np.ndarray, levels: Sequence[float] | None = None) -> np.ndarray:
        if variable not in self.ds:
            raise ValueError(f"climatology store: missing variable {variable!r}")
        doy, hour = _doy_hour(valid_times)
        hours = self.ds["hour"].values
        missing = sorted(set(hour.tolist()) - set(hours.tolist()))
        if missing:
            raise ValueError(f"climatology store has hours {hours.tolist()}, valid times need {missing}")
        da = _level_sel(self.ds[variable], levels)
        sub = da.sel(dayofyear=xr.DataArray(doy, dims="time"), hour=xr.DataArray(hour, dims="time"))
        return stores.read(sub, ("time",) + _ORDER)
