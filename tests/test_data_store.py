"""WeatherStore: round trip, every layout variant to identical arrays, and each bad input's message."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from mosaic_jax import variables
from mosaic_jax.data import WeatherStore, make_demo_data, open_store
from mosaic_jax.data.demo import _blocks, _Grid, _time_axis, make_static_fields
from mosaic_jax.data.store import _decode_times

START, END = "2020-03-01", "2020-03-03T18:00"  # 12 times, 6-hourly


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("store") / "base.zarr", resolution_deg=15.0, start=START, end=END,
                          seed=3)


@pytest.fixture(scope="module")
def base_arrays(base) -> tuple[np.ndarray, np.ndarray]:
    with WeatherStore(base) as s:
        return s.states(np.arange(s.times.size)), s.static()


def _write(ds: xr.Dataset, path: Path, **kw) -> Path:
    """Write with fresh encodings (the source store's chunking would otherwise carry over)."""
    for v in ds.variables.values():
        v.encoding = {}
    kw.setdefault("zarr_format", 2)  # WeatherBench2's; the fast read path's
    ds.to_zarr(path, mode="w", consolidated=kw["zarr_format"] == 2, **kw)
    return path


def test_round_trip_equals_generated_arrays(base, base_arrays):
    """The store holds exactly what the generator computed, in SPEC.md's layout."""
    states, static = base_arrays
    grid = _Grid.from_resolution(15.0)
    times = _time_axis(START, END, 6)
    fields = {}
    for _, _, f in _blocks(grid, times, variables.PRESSURE_LEVELS, 6.0, 3, make_static_fields(grid, 3)):
        for k, v in f.items():
            fields.setdefault(k, []).append(v)
    fields = {k: np.concatenate(v) for k, v in fields.items()}
    for c, name in enumerate(variables.CHANNELS):
        var, level = variables.split_channel(name)
        want = fields[var] if level is None else fields[var][:, variables.PRESSURE_LEVELS.index(level)]
        np.testing.assert_array_equal(states[..., c], want, err_msg=name)
    sf = make_static_fields(grid, 3)
    np.testing.assert_array_equal(static, np.stack([sf[k] for k in variables.STATIC_VARIABLES], -1))
    assert states.shape == (12, 24, 13, 82) and states.dtype == np.float32
    with WeatherStore(base) as s:
        np.testing.assert_array_equal(s.latitude, np.linspace(-90, 90, 13))
        np.testing.assert_array_equal(s.longitude, np.arange(24) * 15.0)
        assert s.times[0] == np.datetime64("2020-03-01T00") and s.time_step_hours == 6.0


def test_fast_path_equals_xarray_path(base, base_arrays):
    slow = WeatherStore(base)
    for r in slow._reads:
        r.fast = None
    np.testing.assert_array_equal(slow.states(np.arange(12)), base_arrays[0])
    with WeatherStore(base) as fast:
        assert all(fast._direct(r) for r in fast._reads)
        # any order, duplicates, times as datetimes
        idx = [5, 1, 5, 11]
        np.testing.assert_array_equal(fast.states(idx), base_arrays[0][idx])
        np.testing.assert_array_equal(fast.states(fast.times[idx]), base_arrays[0][idx])


def _lat_lon(ds):
    return ds.transpose(*[d for d in ("time", "level", "latitude", "longitude") if d in ds.dims])


def _north_south(ds):
    return ds.isel(latitude=slice(None, None, -1))


def _more_levels_reversed(ds):
    extra = ds[list(variables.ATMOSPHERIC_VARIABLES)].isel(level=[0, 1, 2]) * 0 - 999.0
    extra = extra.assign_coords(level=[1, 10, 975])
    atm = xr.concat([ds[list(variables.ATMOSPHERIC_VARIABLES)], extra], dim="level").sortby("level", ascending=False)
    return xr.merge([ds.drop_vars(list(variables.ATMOSPHERIC_VARIABLES) + ["level"]), atm])


def _short_names(ds):
    return ds.rename({"latitude": "lat", "longitude": "lon"})


def _float64(ds):
    return ds.astype({k: np.float64 for k in ds.data_vars})


VARIANTS = {  # name: (transform, to_zarr keywords)
    "lat_lon_dim_order": (_lat_lon, {}),
    "north_to_south": (_north_south, {}),
    "more_levels_other_order": (_more_levels_reversed, {}),
    "int_hours_since_1959": (lambda ds: ds, {"encoding": {"time": {"units": "hours since 1959-01-01",
                                                                    "dtype": "int64"}}}),
    "lat_lon_names": (_short_names, {}),
    "float64": (_float64, {}),
    "zarr_v3": (lambda ds: ds, {"zarr_format": 3}),
    "time_chunks_of_5": (lambda ds: ds.chunk(time=5), {}),
    "levels_split_in_chunks": (lambda ds: ds.chunk(time=1, level=4), {}),
}


@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_layout_variants_read_identically(base, base_arrays, tmp_path, variant):
    transform, kw = VARIANTS[variant]
    path = _write(transform(xr.open_zarr(base).load()), tmp_path / f"{variant}.zarr", **kw)
    with WeatherStore(path) as s:
        for r in s._reads:  # both read paths are covered
            slow = variant == "zarr_v3" or (variant == "levels_split_in_chunks" and r.level_pos is not None)
            assert (r.fast is None) == slow, r.name
        np.testing.assert_array_equal(s.states(np.arange(s.times.size)), base_arrays[0])
        np.testing.assert_array_equal(s.static(), base_arrays[1])


def test_time_stored_as_datetime64(base, base_arrays, tmp_path):
    """A time array zarr holds as datetime64 itself (no CF units)."""
    ds = xr.open_zarr(base).load()
    path = _write(ds.drop_vars("time"), tmp_path / "dt.zarr", zarr_format=2)
    g = zarr.open_group(str(path), mode="r+", zarr_format=2, use_consolidated=False)
    t = g.create_array("time", shape=(ds.time.size,), dtype="M8[ns]")
    t[:] = ds.time.values
    t.attrs["_ARRAY_DIMENSIONS"] = ["time"]
    zarr.consolidate_metadata(str(path), zarr_format=2)
    assert "units" not in g["time"].attrs
    with WeatherStore(path) as s:
        np.testing.assert_array_equal(s.times, ds.time.values)
        np.testing.assert_array_equal(s.states(np.arange(12)), base_arrays[0])


def test_integer_time_decoded_from_units_attribute(base):
    raw = xr.open_zarr(base, decode_times=False)
    assert raw.time.dtype.kind == "i" and raw.time.attrs["units"].startswith("hours since")
    np.testing.assert_array_equal(_decode_times(raw, "x"), xr.open_zarr(base).time.values)
    with pytest.raises(ValueError, match="without a 'units' attribute"):
        _decode_times(raw.assign_coords(time=("time", raw.time.values, {})), "x")


def test_configurable_channels_and_absent_static(base, base_arrays):
    channels = ("temperature_850", "2m_temperature", "geopotential_500", "temperature_50")
    with WeatherStore(base, channels=channels, static_variables=("land_sea_mask",)) as s:
        x = s.states([0, 3])
        for i, name in enumerate(channels):
            np.testing.assert_array_equal(x[..., i], base_arrays[0][[0, 3]][..., variables.CHANNELS.index(name)])
        np.testing.assert_array_equal(s.static()[..., 0], base_arrays[1][..., 1])
    with WeatherStore(base, static_variables=()) as s:
        assert s.static().shape == (24, 13, 0)


def test_pickles_by_path(base, base_arrays):
    s = WeatherStore(base, channels=("temperature_850",))
    blob = pickle.dumps(s)
    assert len(blob) < 2000  # the path, not the data
    t = pickle.loads(blob)
    c = variables.CHANNELS.index("temperature_850")
    np.testing.assert_array_equal(t.states([2]), base_arrays[0][[2]][..., [c]])


def test_open_store_is_lazy(base):
    ds = open_store(base)
    assert set(variables.ATMOSPHERIC_VARIABLES) <= set(ds.data_vars)
    assert not ds["temperature"].variable._in_memory


# ---- bad inputs ------------------------------------------------------------------------
def test_missing_path():
    with pytest.raises(FileNotFoundError, match="zarr store not found"):
        WeatherStore("/nonexistent/store.zarr")


def test_missing_variable(base, tmp_path):
    path = _write(xr.open_zarr(base).drop_vars("vertical_velocity"), tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="variable 'vertical_velocity' not found"):
        WeatherStore(path)


def test_missing_level(base, tmp_path):
    ds = xr.open_zarr(base)
    path = _write(ds.sel(level=[lvl for lvl in variables.PRESSURE_LEVELS if lvl != 925]), tmp_path / "s.zarr")
    with pytest.raises(ValueError, match=r"level 925 of 'geopotential' not found \(store levels: \[50, 100"):
        WeatherStore(path)


def test_missing_static_field_says_how_to_declare_it_absent(base, tmp_path):
    path = _write(xr.open_zarr(base).drop_vars("soil_type"), tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="static field 'soil_type' not found.*declare it absent"):
        WeatherStore(path)
    with WeatherStore(path, static_variables=("geopotential_at_surface", "land_sea_mask")) as s:
        assert s.static().shape == (24, 13, 2)


def test_wrong_grid(base, tmp_path):
    with pytest.raises(ValueError, match=r"grid mismatch: .* is 24 lon x 13 lat \(15 deg\), expected 240 x 121"):
        WeatherStore(base, grid=(240, 121))
    ds = xr.open_zarr(base)
    shifted = ds.assign_coords(longitude=ds.longitude - 180.0)
    with pytest.raises(ValueError, match="longitude must be 0..360"):
        WeatherStore(_write(shifted, tmp_path / "lon.zarr"))
    no_poles = ds.isel(latitude=slice(1, -1))
    with pytest.raises(ValueError, match="latitude must run pole to pole"):
        WeatherStore(_write(no_poles, tmp_path / "lat.zarr"))


def test_time_outside_store_prints_range(base):
    with WeatherStore(base) as s:
        with pytest.raises(ValueError, match=r"time 2021-01-01T00:00 is outside store .*: available "
                                             r"2020-03-01T00:00 to 2020-03-03T18:00 \(12 times, every 6 h\)"):
            s.index_of("2021-01-01")
        with pytest.raises(ValueError, match="not on the time axis"):
            s.states(["2020-03-01T03:00"])
        with pytest.raises(ValueError, match="time index 12 outside store"):
            s.states([12])


def test_nan_in_input_state_names_channel_and_time(base, tmp_path):
    ds = xr.open_zarr(base).load()
    ds["temperature"][4, variables.PRESSURE_LEVELS.index(850), 3, 5] = np.nan
    path = _write(ds, tmp_path / "nan.zarr")
    with WeatherStore(path) as s:
        s.states([0, 3, 5])  # other times are fine
        with pytest.raises(ValueError, match=r"NaN/inf in channel 'temperature_850' at 2020-03-02T00:00"):
            s.states([0, 4])


def test_gcs_urls_are_anonymous_unless_credentials_are_given(monkeypatch):
    calls = []
    monkeypatch.setattr(xr, "open_dataset", lambda path, **kw: calls.append((path, kw)) or xr.Dataset())
    open_store("gs://weatherbench2/datasets/era5/x.zarr")
    open_store("gs://bucket/y.zarr", storage_options={"token": "/keys/sa.json"})
    assert calls[0][1]["storage_options"] == {"token": "anon"}
    assert calls[1][1]["storage_options"] == {"token": "/keys/sa.json"}
    assert calls[0][1]["engine"] == "zarr" and calls[0][1]["chunks"] is None  # lazy, no dask
