"""The forecast command end to end on a demo store, and its output formats."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import xarray as xr

from mosaic_jax.checkpoint import save_model
from mosaic_jax.cli import main as cli
from mosaic_jax.config import BottleneckConfig, StageConfig, get_config
from mosaic_jax.data import WeatherStore, compute_stats, make_demo_data
from mosaic_jax.forecast import run_forecast
from mosaic_jax.model import init_params
from mosaic_jax.variables import CHANNELS

N_LON, N_LAT = 24, 13  # 15 degree demo grid


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    store_path = make_demo_data(root / "demo.zarr", resolution_deg=15.0, start="2020-01-01",
                                end="2020-01-05T18:00")
    stage = StageConfig(nside=4, dim=16, num_heads=2, block_attn_size=48, sparse_block_size=12,
                        sparse_block_count=2, encoder_depth=1, decoder_depth=1, mlp_ratio=2.0, gqa_ratio=2)
    bottleneck = BottleneckConfig(nside=2, dim=16, num_heads=2, block_attn_size=12, sparse_block_size=4,
                                  sparse_block_count=2, depth=1, mlp_ratio=2.0, gqa_ratio=2)
    cfg = dataclasses.replace(get_config("demo"), stages=(stage,), bottleneck=bottleneck, n_lon=N_LON, n_lat=N_LAT,
                              k_neighbors=4)
    params = init_params(cfg, jax.random.key(0))
    model_dir = save_model(root / "model", params, cfg)
    store = WeatherStore(store_path, grid=(N_LON, N_LAT))
    stats = compute_stats(store, step_hours=6)
    stats.save(model_dir / "stats.npz")
    return root, store_path, model_dir, cfg, params, store, stats


def test_forecast_npz_layout_and_units(setup, tmp_path):
    root, store_path, model_dir, cfg, params, store, stats = setup
    out = tmp_path / "f.npz"
    summary = run_forecast(cfg, params, store, stats, init_time="2020-01-02T00", num_steps=3, num_members=2,
                           output=out, progress=False)
    assert summary.output == out.absolute() and summary.seconds_per_member_step > 0
    with np.load(out) as f:
        assert f["forecasts"].shape == (2, 3, N_LON, N_LAT, 82)
        assert list(f["variables"]) == list(CHANNELS)
        np.testing.assert_array_equal(f["lead_time_hours"], [6, 12, 18])
        assert f["init_time"] == np.datetime64("2020-01-02T00:00:00")
        np.testing.assert_allclose(f["latitude"], np.linspace(-90, 90, N_LAT))
        t2m = f["forecasts"][..., 0]
        # Physical units: denormalized 2 m temperature sits around the store's own values.
        truth = store.states(store.indices_of(np.array(["2020-01-02T06"], "datetime64[ns]")))[0, ..., 0]
        assert 150 < t2m.mean() < 350 and abs(t2m.mean() - truth.mean()) < 10 * truth.std()
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob(".forecast-*"))


def test_forecast_cli_zarr_round_trips_through_xarray(setup, tmp_path):
    root, store_path, model_dir, cfg, params, store, stats = setup
    npz, zarr_out = tmp_path / "f.npz", tmp_path / "f.zarr"
    common = ["forecast", "--checkpoint", str(model_dir), "--zarr", str(store_path), "--init-time", "2020-01-02T12",
              "--steps", "2", "--members", "2", "--no-progress", "--seed", "7"]
    assert cli(common + ["--output", str(npz)]) == 0
    assert cli(common + ["--output", str(zarr_out)]) == 0
    ds = xr.open_zarr(zarr_out)
    assert ds["geopotential"].dims == ("time", "member", "prediction_timedelta", "level", "longitude", "latitude")
    assert ds["2m_temperature"].attrs["units"] == "K"
    assert list(ds.level.values) == [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
    assert ds.time.values[0] == np.datetime64("2020-01-02T12:00", "ns")
    assert list(ds.prediction_timedelta.values.astype("timedelta64[h]").astype(int)) == [6, 12]
    with np.load(npz) as f:
        arr = f["forecasts"]
    np.testing.assert_allclose(ds["temperature"].sel(level=850).values[0], arr[..., CHANNELS.index("temperature_850")],
                               rtol=1e-6)
    np.testing.assert_allclose(ds["2m_temperature"].values[0], arr[..., 0], rtol=1e-6)


def test_forecast_errors(setup, tmp_path):
    root, store_path, model_dir, cfg, params, store, stats = setup
    with pytest.raises(ValueError, match="2020-01-01"):
        run_forecast(cfg, params, store, stats, init_time="2021-01-01", num_steps=1, num_members=1,
                     output=tmp_path / "x.npz", progress=False)
    with pytest.raises(ValueError, match="earliest possible init time"):
        run_forecast(cfg, params, store, stats, init_time="2020-01-01T00", num_steps=1, num_members=1,
                     output=tmp_path / "x.npz", progress=False)
    with pytest.raises(ValueError, match=r"\.npz, \.zarr or \.nc"):
        run_forecast(cfg, params, store, stats, init_time="2020-01-02", num_steps=1, num_members=1,
                     output=tmp_path / "x.csv", progress=False)
    assert not (tmp_path / "x.npz").exists()


def test_forecast_cli_forcing_the_kernels_without_a_hopper_gpu_is_a_clear_error(setup, tmp_path, capsys):
    root, store_path, model_dir, cfg, params, store, stats = setup
    out = tmp_path / "f.npz"
    assert cli(["forecast", "--checkpoint", str(model_dir), "--zarr", str(store_path), "--init-time", "2020-01-02T12",
                "--steps", "1", "--members", "1", "--no-progress", "--attention-impl", "pallas",
                "--output", str(out)]) == 2
    assert "'pallas' runs the Pallas Mosaic GPU kernels, which need a Hopper GPU" in capsys.readouterr().err
    assert not out.exists()


def test_several_init_times_share_member_keys(setup, tmp_path):
    root, store_path, model_dir, cfg, params, store, stats = setup
    both = tmp_path / "both.nc"
    run_forecast(cfg, params, store, stats, init_time=["2020-01-02T00", "2020-01-03T00"], num_steps=2,
                 num_members=2, output=both, progress=False)
    single = tmp_path / "one.npz"
    run_forecast(cfg, params, store, stats, init_time="2020-01-03T00", num_steps=2, num_members=2, output=single,
                 progress=False)
    ds = xr.open_dataset(both, engine="h5netcdf")
    assert ds.sizes["time"] == 2
    with np.load(single) as f:
        np.testing.assert_allclose(ds["2m_temperature"].values[1], f["forecasts"][..., 0], rtol=1e-6)
    with pytest.raises(ValueError, match="one init time"):
        run_forecast(cfg, params, store, stats, init_time=["2020-01-02T00", "2020-01-03T00"], num_steps=1,
                     num_members=1, output=tmp_path / "x.npz", progress=False)
