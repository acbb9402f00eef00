"""Reading WeatherBench2-style zarr stores into Mosaic's ``(lon, lat, channel)`` states.

A store is opened once with xarray (metadata, time decoding, validation); every layout
difference that WeatherBench2 stores show in practice is resolved into a read plan at
that point, so that reading a state is only zarr reads plus one transpose per variable:
dim order ``(..., longitude, latitude)`` or ``(..., latitude, longitude)``, latitude
stored north to south, more pressure levels than requested or in another order, time as
integers with a CF ``units`` attribute or as datetime64.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import xarray as xr

from mosaic_jax import variables
from mosaic_jax.data.chunks import LocalChunkReader
from mosaic_jax.data.timefeatures import format_time, to_datetime64, to_datetime64_array

_DIM_ALIASES = {"lat": "latitude", "lon": "longitude", "pressure_level": "level", "isobaricInhPa": "level"}


def open_store(path_or_url: str | os.PathLike, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open a zarr store lazily (nothing but metadata is read).

    ``gs://`` URLs are read through gcsfs, anonymously unless ``storage_options``
    gives credentials (e.g. ``{"token": "/path/key.json"}``).
    """
    path = os.fspath(path_or_url)
    remote = "://" in path
    if not remote and not os.path.exists(path):
        raise FileNotFoundError(f"zarr store not found: {path}")
    if remote and storage_options is None and path.startswith(("gs://", "gcs://")):
        storage_options = {"token": "anon"}
    try:
        return xr.open_dataset(path, engine="zarr", chunks=None, cache=False,
                               storage_options=storage_options if remote else None)
    except FileNotFoundError:
        raise
    except Exception as e:  # zarr/fsspec raise many types; the user needs the path.
        raise ValueError(f"cannot open {path} as a zarr store: {type(e).__name__}: {e}") from e


def _decode_times(ds: xr.Dataset, path: str) -> np.ndarray:
    """The time axis as datetime64[ns], decoding integer time from its units attribute
    where xarray did not (e.g. a units string it could not parse on its own)."""
    if "time" not in ds.coords and "time" not in ds.variables:
        raise ValueError(f"store {path} has no 'time' coordinate")
    t = ds["time"]
    if np.issubdtype(t.dtype, np.datetime64):
        times = t.values.astype("datetime64[ns]")
    else:
        units = t.attrs.get("units") or t.encoding.get("units")
        if not units:
            raise ValueError(f"store {path}: 'time' is {t.dtype} without a 'units' attribute "
                             "(expected datetime64 or e.g. units='hours since 1959-01-01')")
        try:
            times = xr.coding.times.decode_cf_datetime(
                t.values, units, t.attrs.get("calendar", "proleptic_gregorian")).astype("datetime64[ns]")
        except Exception as e:
            raise ValueError(f"store {path}: cannot decode time with units {units!r}: {e}") from e
    if times.size > 1 and not np.all(np.diff(times) > np.timedelta64(0, "ns")):
        raise ValueError(f"store {path}: time is not strictly increasing")
    return times


def _check_grid(ds: xr.Dataset, path: str, grid: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Longitude 0..360 ascending and latitude pole to pole, equally spaced; returns
    (lon, lat south to north, whether the store's latitude must be flipped)."""
    for name in ("longitude", "latitude"):
        if name not in ds.variables:
            raise ValueError(f"store {path} has no {name!r} coordinate")
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    if grid is not None and (lon.size, lat.size) != tuple(grid):
        raise ValueError(f"grid mismatch: store {path} is {lon.size} lon x {lat.size} lat "
                         f"({360.0 / max(lon.size, 1):g} deg), expected {grid[0]} x {grid[1]}")
    step = 360.0 / lon.size
    if not np.allclose(lon, np.arange(lon.size) * step, atol=1e-6 * step):
        raise ValueError(f"store {path}: longitude must be 0..360 ascending with step {step:g} deg, "
                         f"got {lon[0]:g}..{lon[-1]:g}")
    flip = lat.size > 1 and lat[0] > lat[-1]
    if flip:
        lat = lat[::-1]
    expected = np.linspace(-90.0, 90.0, lat.size)
    if lat.size < 2 or not np.allclose(lat, expected, atol=1e-6):
        raise ValueError(f"store {path}: latitude must run pole to pole (-90..90, equally spaced, "
                         f"{lat.size} points), got {lat[0]:g}..{lat[-1]:g}")
    return lon, lat, flip


@dataclasses.dataclass
class _VarRead:
    """How to read one store variable into some output channels."""

    name: str
    store_dims: tuple[str, ...]      # the variable's dims in the store
    level_pos: np.ndarray | None     # store level positions, in channel order
    out: slice | np.ndarray          # output channels
    fast: LocalChunkReader | None = None

    @property
    def target_dims(self) -> tuple[str, ...]:
        """``([time,] [level,] longitude, latitude)``: the order the output is built from."""
        return tuple(d for d in ("time", "level", "longitude", "latitude") if d in self.store_dims)


def _plan(ds: xr.Dataset, path: str, names: Sequence[str], *, static: bool) -> list[_VarRead]:
    """Group channels by store variable and locate their levels by value."""
    grouped: dict[str, list[tuple[int | None, int]]] = {}
    for i, name in enumerate(names):
        var, level = (name, None) if static else variables.split_channel(name)
        grouped.setdefault(var, []).append((level, i))
    store_vars = sorted(str(v) for v in ds.data_vars)
    problems: list[str] = []
    plans: list[_VarRead] = []
    for var, entries in grouped.items():
        what = "static field" if static else "variable"
        if var not in ds.data_vars:
            hint = " (pass static_variables without it to declare it absent)" if static else ""
            problems.append(f"{what} {var!r} not found{hint}")
            continue
        spatial = {"longitude", "latitude"}
        levels = [lvl for lvl, _ in entries]
        want_level = levels[0] is not None
        if any((lvl is None) == want_level for lvl in levels):
            problems.append(f"{var!r} is requested both with and without a level")
            continue
        expect = spatial | ({"level"} if want_level else set()) | (set() if static else {"time"})
        if set(ds[var].dims) != expect:
            problems.append(f"{what} {var!r} has dims {tuple(ds[var].dims)}, expected {sorted(expect)}")
            continue
        out_idx = np.array([i for _, i in entries])
        out: slice | np.ndarray = (slice(out_idx[0], out_idx[-1] + 1)
                                   if np.array_equal(out_idx, np.arange(out_idx[0], out_idx[0] + out_idx.size))
                                   else out_idx)
        dims = tuple(str(d) for d in ds[var].dims)
        if not want_level:
            plans.append(_VarRead(var, dims, None, out))
            continue
        store_levels = np.asarray(ds["level"].values, dtype=np.float64)
        pos = []
        for lvl in levels:
            hit = np.flatnonzero(np.isclose(store_levels, float(lvl)))
            if hit.size == 0:
                problems.append(f"level {lvl} of {var!r} not found (store levels: "
                                f"{[int(x) if float(x).is_integer() else float(x) for x in store_levels]})")
            else:
                pos.append(int(hit[0]))
        if len(pos) == len(levels):
            plans.append(_VarRead(var, dims, np.array(pos), out))
    if problems:
        raise ValueError(f"store {path}: " + "; ".join(problems) + f". Store variables: {store_vars}")
    return plans


def _as_key(index: np.ndarray) -> slice | np.ndarray:
    """A slice where the indices are consecutive: zarr reads those without fancy indexing."""
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return index


def _channels_last(stage: np.ndarray, norm: tuple[np.ndarray, np.ndarray] | None, dests: Sequence[np.ndarray],
                   block: int = 1024) -> None:
    """``stage[k]`` ``(C, lon, lat)`` -> ``dests[k]`` ``(lon, lat, C)``, optionally
    ``(x - mean) * inv_std``, in blocks of grid points that stay in cache (2-3x faster
    than one strided numpy copy)."""
    c = stage.shape[1]
    src = stage.reshape(stage.shape[0], c, -1)
    for k, dest in enumerate(dests):
        flat = dest.reshape(-1, c)
        if not np.shares_memory(flat, dest):
            raise ValueError("states(out=...): each destination must be a C-contiguous (lon, lat, C) array")
        for a in range(0, src.shape[2], block):
            dst = flat[a:a + block]
            if norm is None:
                dst[...] = src[k, :, a:a + block].T
            else:
                np.subtract(src[k, :, a:a + block].T, norm[0], out=dst)
                dst *= norm[1]


class WeatherStore:
    """Random access to Mosaic states in a WeatherBench2-style zarr store.

    ``channels`` are ``{var}_{level}`` or surface names (default: SPEC.md's 82);
    ``static_variables`` lists the static fields present (pass fewer to declare some
    absent). ``grid=(n_lon, n_lat)`` makes a different grid an error. Pickles by path,
    so worker processes reopen the store instead of copying it.
    """

    def __init__(self, path_or_url: str | os.PathLike, *, channels: Sequence[str] = variables.CHANNELS,
                 static_variables: Sequence[str] = variables.STATIC_VARIABLES,
                 grid: tuple[int, int] | None = None, storage_options: dict | None = None) -> None:
        self.path = os.fspath(path_or_url)
        self.channels = tuple(channels)
        self.static_variables = tuple(static_variables)
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.storage_options = storage_options
        if not self.channels:
            raise ValueError("channels: at least one channel is required")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels: duplicate channel names")
        ds = open_store(self.path, storage_options=storage_options)
        ds = ds.rename({k: v for k, v in _DIM_ALIASES.items() if k in ds.variables or k in ds.dims})
        self._ds = ds
        self.times = _decode_times(ds, self.path)
        self.longitude, self.latitude, self._flip_lat = _check_grid(ds, self.path, self.grid)
        self._reads = _plan(ds, self.path, self.channels, static=False)
        self._static_reads = _plan(ds, self.path, self.static_variables, static=True)
        local = "://" not in self.path or self.path.startswith("file://")
        for r in self._reads if local else ():
            r.fast = LocalChunkReader.open(self.path.removeprefix("file://"), r.name, len(r.store_dims) - 1)
        # reads through zarr run concurrently, so that remote latencies overlap
        slow = sum(r.fast is None for r in self._reads)
        self._pool = ThreadPoolExecutor(max_workers=min(16, slow)) if slow > 1 else None
        self._static: np.ndarray | None = None
        self._index = {t: i for i, t in enumerate(self.times.astype(np.int64))}

    # ---- pickling: reopen by path ---------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return dict(path_or_url=self.path, channels=self.channels, static_variables=self.static_variables,
                    grid=self.grid, storage_options=self.storage_options)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return (f"WeatherStore({self.path!r}, {len(self.channels)} channels, {len(self.static_variables)} static, "
                f"{self.longitude.size}x{self.latitude.size}, {self.time_range_str()})")

    # ---- time axis ------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def time_step_hours(self) -> float | None:
        """The spacing of the time axis in hours, or None where it is not uniform."""
        if self.times.size < 2:
            return None
        d = np.diff(self.times)
        return float(d[0] / np.timedelta64(1, "h")) if np.all(d == d[0]) else None

    def time_range_str(self) -> str:
        if self.times.size == 0:
            return "no times"
        step = self.time_step_hours
        every = f", every {step:g} h" if step is not None else ""
        return f"{format_time(self.times[0])} to {format_time(self.times[-1])} ({self.times.size} times{every})"

    def index_of(self, time: Any) -> int:
        """Position of ``time`` on the store's time axis; a clear error when absent."""
        t = to_datetime64(time)
        i = self._index.get(int(t.astype(np.int64)))
        if i is None:
            where = ("outside" if self.times.size == 0 or not self.times[0] <= t <= self.times[-1]
                     else "not on the time axis of")
            raise ValueError(f"time {format_time(t)} is {where} store {self.path}: available "
                             f"{self.time_range_str()}")
        return i

    def indices_of(self, times: Any) -> np.ndarray:
        return np.array([self.index_of(t) for t in to_datetime64_array(times)], dtype=np.int64)

    # ---- reading ----------------------------------------------------------------------
    def _resolve(self, times_or_indices: Any) -> np.ndarray:
        arr = np.atleast_1d(np.asarray(times_or_indices))
        if arr.dtype.kind in "iu":
            idx = arr.astype(np.int64)
            bad = (idx < 0) | (idx >= self.times.size)
            if bad.any():
                raise ValueError(f"time index {int(idx[bad][0])} outside store {self.path} "
                                 f"(0..{self.times.size - 1}: {self.time_range_str()})")
            return idx
        return self.indices_of(arr)

    def _read_var(self, r: _VarRead, times: np.ndarray | None) -> np.ndarray:
        """``([n,] [level,] lon, lat)`` float32 for sorted unique time positions (None: static)."""
        dims = r.store_dims
        if r.fast is not None and times is not None:
            data = r.fast.read(times)
            if r.level_pos is not None and not np.array_equal(r.level_pos, np.arange(data.shape[dims.index("level")])):
                data = np.take(data, r.level_pos, axis=dims.index("level"))
        else:  # through xarray (remote stores, other encodings): sorted reads, then reorder
            key: dict[str, Any] = {} if times is None else {"time": _as_key(times)}
            if r.level_pos is not None:
                order = np.argsort(r.level_pos, kind="stable")
                key["level"] = _as_key(r.level_pos[order])
            data = np.asarray(self._ds[r.name].variable.isel(key).values, dtype=np.float32)
            if r.level_pos is not None and not np.array_equal(order, np.arange(order.size)):
                data = np.take(data, np.argsort(order), axis=dims.index("level"))
        data = data.transpose([dims.index(d) for d in r.target_dims])
        return data[..., ::-1] if self._flip_lat else data

    def _direct(self, r: _VarRead) -> bool:
        """Whether ``r``'s chunks can be decoded straight into the channel-first staging
        buffer: the store already holds them as ``([level,] longitude, latitude)``, south
        to north, all levels in order, for contiguous channels."""
        return (r.fast is not None and not self._flip_lat and r.store_dims == r.target_dims
                and isinstance(r.out, slice)
                and (r.level_pos is None or np.array_equal(r.level_pos, np.arange(r.fast.shape[1]))))

    def _read_into(self, r: _VarRead, times: np.ndarray, stage: np.ndarray) -> None:
        """Fill ``stage[:, channels of r]`` (stage is ``(n, C, lon, lat)``)."""
        if self._direct(r):
            assert r.fast is not None and isinstance(r.out, slice)
            r.fast.read(times, out=stage[:, r.out] if r.level_pos is not None else stage[:, r.out.start])
        else:
            data = self._read_var(r, times)
            stage[:, r.out] = data if r.level_pos is not None else data[:, None]

    def states(self, times_or_indices: Any, *, stats: Any = None,
               out: Sequence[np.ndarray] | None = None) -> np.ndarray | Sequence[np.ndarray]:
        """``(n, lon, lat, C)`` float32 states at the given times (datetime-like) or
        positions (integers); raises naming the channel and time of any NaN.

        ``stats`` (a :class:`NormStats`) normalizes them in the same pass as the final
        transpose. ``out``, one C-contiguous ``(lon, lat, C)`` float32 array per requested
        time, receives them in place (a training batch is filled without copies).
        """
        idx = self._resolve(times_or_indices)
        uniq, first, inverse = np.unique(idx, return_index=True, return_inverse=True)
        n, c = uniq.size, self.num_channels
        stage = np.empty((n, c, self.longitude.size, self.latitude.size), np.float32)
        if self._pool is None:
            for r in self._reads:
                self._read_into(r, uniq, stage)
        else:
            list(self._pool.map(lambda r: self._read_into(r, uniq, stage), self._reads))
        bad = None if np.isfinite(stage.sum()) else ~np.isfinite(stage).all(axis=(2, 3))  # one pass when clean
        if bad is not None and bad.any():
            t, ch = np.argwhere(bad)[0]
            nbad = int(bad.sum())
            raise ValueError(f"store {self.path}: NaN/inf in channel {self.channels[ch]!r} at "
                             f"{format_time(self.times[uniq[t]])}"
                             + (f" (and {nbad - 1} more channel-times)" if nbad > 1 else ""))
        norm = None if stats is None else (stats.state_mean.astype(np.float32),
                                           (1.0 / stats.state_std).astype(np.float32))
        if out is None:
            result = np.empty((n, self.longitude.size, self.latitude.size, c), np.float32)
            _channels_last(stage, norm, result)
            return result if np.array_equal(inverse.ravel(), np.arange(n)) else result[inverse.ravel()]
        if len(out) != idx.size:
            raise ValueError(f"states(out=...): {len(out)} arrays for {idx.size} times")
        _channels_last(stage, norm, [out[i] for i in first])
        for i, k in enumerate(inverse.ravel()):  # repeated times
            if i != first[k]:
                out[i][...] = out[first[k]]
        return out

    def static(self) -> np.ndarray:
        """``(lon, lat, n_static)`` float32 static fields, in ``static_variables`` order."""
        if self._static is None:
            out = np.empty((self.longitude.size, self.latitude.size, len(self.static_variables)), np.float32)
            for r in self._static_reads:
                out[..., r.out] = self._read_var(r, None)[..., None]
            if not np.isfinite(out).all():
                bad = [self.static_variables[i] for i in range(out.shape[-1]) if not np.isfinite(out[..., i]).all()]
                raise ValueError(f"store {self.path}: NaN/inf in static field(s) {bad}")
            self._static = out
        return self._static

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._ds.close()

    def __enter__(self) -> "WeatherStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
