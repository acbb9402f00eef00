"""Ensemble forecasts from a WeatherBench2 store, streamed step by step to disk.

The jitted one-step function runs on device for a chunk of members (sharded over the
devices' ``member`` axis); each new state goes to host, is denormalized and written into
a disk-backed buffer, so device memory holds one step of one chunk, never the forecast.
Writers then export the buffer as the published ``.npz`` layout or as WeatherBench2-named
``.zarr``/``.nc`` through xarray, atomically (temporary path, then rename).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mosaic_jax import variables
from mosaic_jax.atomic import atomic_path
from mosaic_jax.attention import BatchSharding
from mosaic_jax.config import ModelConfig
from mosaic_jax.data import NormStats, WeatherStore, day_year_progress
from mosaic_jax.sampler import EnsembleSampler, member_keys

UNITS = {
    "2m_temperature": "K", "temperature": "K", "10m_u_component_of_wind": "m s-1",
    "10m_v_component_of_wind": "m s-1", "u_component_of_wind": "m s-1", "v_component_of_wind": "m s-1",
    "mean_sea_level_pressure": "Pa", "geopotential": "m2 s-2", "specific_humidity": "kg kg-1",
    "vertical_velocity": "Pa s-1",
}


@dataclasses.dataclass(frozen=True)
class ForecastSummary:
    output: Path
    wall_seconds: float
    seconds_per_member_step: float
    peak_device_bytes: int | None
    num_members: int
    num_steps: int

    def line(self) -> str:
        peak = "n/a" if self.peak_device_bytes is None else f"{self.peak_device_bytes / 2**30:.2f} GiB"
        return (f"wrote {self.output}: {self.num_members} members x {self.num_steps} steps in "
                f"{self.wall_seconds:.2f} s ({self.seconds_per_member_step * 1e3:.1f} ms per member-step), "
                f"peak device memory {peak}")


def history_indices(store: WeatherStore, cfg: ModelConfig, init_time: Any) -> np.ndarray:
    """Store indices of the T history states ending at ``init_time`` (oldest first)."""
    t0 = store.index_of(init_time)
    step = store.time_step_hours
    if step is None or cfg.history_spacing_hours % step:
        raise ValueError(f"store time step {step} h does not divide the history spacing "
                         f"{cfg.history_spacing_hours} h")
    stride = int(cfg.history_spacing_hours // step)
    idx = t0 - stride * np.arange(cfg.num_history_steps - 1, -1, -1)
    if idx[0] < 0:
        first_ok = store.times[stride * (cfg.num_history_steps - 1)]
        raise ValueError(f"init time {init_time} needs {cfg.num_history_steps} history states "
                         f"{cfg.history_spacing_hours} h apart; the earliest possible init time in this store "
                         f"is {first_ok} (store covers {store.time_range_str()})")
    return idx


def peak_device_bytes() -> int | None:
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s]
    return max(peaks) if peaks else None


def run_forecast(cfg: ModelConfig, params: Any, store: WeatherStore, stats: NormStats, *,
                 init_time: Any | Sequence[Any], num_steps: int, num_members: int, output: str | Path,
                 seed: int = 0, member_chunk: int | None = None, dtype: Any = jnp.float32,
                 attention_impl: str = "auto", progress: bool = True) -> ForecastSummary:
    """Forecast ``num_members`` x ``num_steps`` from each init time and write ``output``.

    Several init times go on the ``time`` dim of a ``.zarr``/``.nc`` output; the published
    ``.npz`` layout holds one. The same ``seed`` gives every init time the same member keys.
    """
    output = Path(output)
    suffix = output.suffix
    inits_requested = [init_time] if isinstance(init_time, (str, np.datetime64)) or np.ndim(init_time) == 0 \
        else list(init_time)
    if suffix not in (".npz", ".zarr", ".nc"):
        raise ValueError(f"output must end in .npz, .zarr or .nc, got {output}")
    if suffix == ".npz" and len(inits_requested) != 1:
        raise ValueError("the .npz layout holds one init time; write .zarr or .nc for several")
    if num_steps < 1 or num_members < 1:
        raise ValueError("steps and members must be >= 1")
    if stats.num_channels != cfg.num_channels:
        raise ValueError(f"normalization stats have {stats.num_channels} channels, the model {cfg.num_channels}")
    all_idx = [history_indices(store, cfg, t) for t in inits_requested]  # validate every init up front
    inits = [store.times[idx[-1]] for idx in all_idx]
    static = store.static()

    devices = jax.devices()
    chunk = member_chunk or num_members
    if chunk % len(devices) and chunk >= len(devices):
        raise ValueError(f"member chunk {chunk} must be a multiple of the {len(devices)} devices")
    mesh = Mesh(np.asarray(devices[: min(len(devices), chunk)]), ("member",))
    member_sharding = NamedSharding(mesh, PartitionSpec("member"))
    replicated = NamedSharding(mesh, PartitionSpec())

    # members split over the mesh; a last chunk that does not divide runs replicated
    sharded_step = jax.jit(EnsembleSampler(cfg, dtype=dtype, attention_impl=attention_impl,
                                           batch_sharding=BatchSharding(mesh, ("member",))).step,
                           donate_argnums=(1, 2))
    replicated_step = jax.jit(EnsembleSampler(cfg, dtype=dtype, attention_impl=attention_impl).step,
                              donate_argnums=(1, 2))
    params = jax.device_put(params, replicated)
    static_dev = jax.device_put(jnp.asarray(static), replicated)
    base_key = jax.random.key(seed)

    tmpdir = Path(tempfile.mkdtemp(prefix=".forecast-", dir=output.absolute().parent))
    try:
        buffer = np.lib.format.open_memmap(
            tmpdir / "forecasts.npy", mode="w+", dtype=np.float32,
            shape=(len(inits), num_members, num_steps, cfg.n_lon, cfg.n_lat, cfg.num_channels))
        bar = _progress(len(inits) * num_members * num_steps, progress)
        start = time.perf_counter()
        for i, (idx, init) in enumerate(zip(all_idx, inits)):
            history = stats.normalize(store.states(idx)).astype(np.float32)
            day_year = day_year_progress(np.asarray([init]))[0]
            for lo in range(0, num_members, chunk):
                ids = np.arange(lo, min(lo + chunk, num_members))
                m = len(ids)
                sharded = m % mesh.size == 0
                sharding = member_sharding if sharded else replicated
                step_fn = sharded_step if sharded else replicated_step
                keys = jax.device_put(member_keys(base_key, jnp.asarray(ids)), sharding)
                hist = jax.device_put(np.broadcast_to(history, (m,) + history.shape), sharding)
                dy = jax.device_put(np.broadcast_to(day_year, (m, 2)), sharding)
                for s in range(num_steps):
                    hist, dy, new = step_fn(params, hist, dy, static_dev, keys, jnp.int32(s))
                    buffer[i, lo:lo + m, s] = stats.denormalize(np.asarray(new))
                    bar.update(m)
        wall = time.perf_counter() - start
        bar.close()
        buffer.flush()
        lead_hours = cfg.step_hours * np.arange(1, num_steps + 1)
        write_forecast(output, buffer, cfg.channels, lead_hours, inits, store.longitude, store.latitude)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    member_steps = len(inits) * num_members * num_steps
    return ForecastSummary(output, wall, wall / member_steps, peak_device_bytes(), num_members, num_steps)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="member-step", disable=not enabled, desc="forecast")


def to_dataset(forecasts: np.ndarray, channels: tuple[str, ...], lead_hours: np.ndarray, init_times: Sequence[Any],
               longitude: np.ndarray, latitude: np.ndarray) -> Any:
    """WeatherBench2-named dataset: one variable per field, pressure levels on a ``level`` dim.

    ``forecasts`` (init, member, step, lon, lat, C). Dims ``(time, member, prediction_timedelta,
    [level,] longitude, latitude)`` with ``time`` the init times; backed by dask over the
    (possibly memory-mapped) array, one chunk per init and step.
    """
    import dask.array as da
    import xarray as xr

    arr = da.from_array(forecasts, chunks=(1, forecasts.shape[1], 1) + forecasts.shape[3:])
    groups: dict[str, list[tuple[int | None, int]]] = {}
    for c, name in enumerate(channels):
        var, level = variables.split_channel(name)
        groups.setdefault(var, []).append((level, c))
    data_vars, levels_seen = {}, None
    base_dims = ("time", "member", "prediction_timedelta")
    for var, entries in groups.items():
        attrs = {"units": UNITS.get(var, "")}
        if entries[0][0] is None:
            data_vars[var] = xr.Variable(base_dims + ("longitude", "latitude"), arr[..., entries[0][1]], attrs)
            continue
        levels = [lvl for lvl, _ in entries]
        if levels_seen is not None and levels != levels_seen:
            raise ValueError(f"{var}: levels {levels} differ from other variables' {levels_seen}")
        levels_seen = levels
        stacked = da.stack([arr[..., c] for _, c in entries], axis=3)
        data_vars[var] = xr.Variable(base_dims + ("level", "longitude", "latitude"), stacked, attrs)
    coords = {
        "time": np.asarray([np.datetime64(t, "ns") for t in init_times]),
        "member": np.arange(forecasts.shape[1]),
        "prediction_timedelta": (lead_hours.astype("int64") * np.timedelta64(1, "h")).astype("timedelta64[ns]"),
        "longitude": ("longitude", np.asarray(longitude, np.float64), {"units": "degrees_east"}),
        "latitude": ("latitude", np.asarray(latitude, np.float64), {"units": "degrees_north"}),
    }
    if levels_seen is not None:
        coords["level"] = ("level", np.asarray(levels_seen, np.int64), {"units": "hPa"})
    return xr.Dataset(data_vars, coords=coords, attrs={"source": "mosaic-jax ensemble forecast"})


def write_forecast(output: Path, forecasts: np.ndarray, channels: tuple[str, ...], lead_hours: np.ndarray,
                   init_times: Sequence[Any], longitude: np.ndarray, latitude: np.ndarray) -> Path:
    """Write ``forecasts`` (init, member, step, lon, lat, C) atomically: temporary sibling, then rename."""
    with atomic_path(output) as tmp:
        if output.suffix == ".npz":
            with open(tmp, "wb") as f:  # np.savez streams a memmap in buffered chunks
                np.savez(f, forecasts=forecasts[0], variables=np.asarray(channels), lead_time_hours=lead_hours,
                         init_time=np.datetime64(init_times[0], "s"), longitude=np.asarray(longitude),
                         latitude=np.asarray(latitude))
        else:
            ds = to_dataset(forecasts, channels, lead_hours, init_times, longitude, latitude)
            if output.suffix == ".zarr":
                ds.to_zarr(tmp, mode="w", consolidated=True, zarr_format=2)  # as WeatherBench2 stores
            else:
                ds.to_netcdf(tmp, engine="h5netcdf")
    return output.absolute()
