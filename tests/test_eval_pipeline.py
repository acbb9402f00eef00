"""The streaming evaluator and ``mosaic-jax evaluate`` on small synthetic WB2-layout stores."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from mosaic_jax import cli
from mosaic_jax import evaluation as ev
from mosaic_jax.evaluation.evaluate import evaluate_forecasts

N_LON, N_LAT = 48, 25
LON = np.arange(N_LON) * 7.5
LAT = np.linspace(-90, 90, N_LAT)
LEVELS = (500, 850)


def make_truth(days: int = 8, seed: int = 0) -> xr.Dataset:
    """WB2 truth layout: (time, [level,] longitude, latitude), 6-hourly, travelling waves + noise."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2021-03-01", periods=days * 4, freq="6h").values
    t = np.arange(time.size)[:, None, None] / 4.0
    lon, lat = np.deg2rad(LON)[None, :, None], np.deg2rad(LAT)[None, None, :]

    def field(base: float, amp: float, k: int) -> np.ndarray:
        wave = amp * np.cos(lat) * np.cos(k * lon - 0.5 * t) + 0.3 * amp * np.sin(2 * lat) * np.cos(5 * lon + t)
        return base + wave + 0.2 * amp * rng.standard_normal((time.size, N_LON, N_LAT))

    data = {
        "2m_temperature": (("time", "longitude", "latitude"), field(280.0, 10.0, 2)),
        "mean_sea_level_pressure": (("time", "longitude", "latitude"), field(101000.0, 700.0, 3)),
        "geopotential": (("time", "level", "longitude", "latitude"),
                         np.stack([field(50000.0 + 1e4 * j, 900.0, 3 + j) for j in range(len(LEVELS))], 1)),
    }
    return xr.Dataset(data, coords={"time": time, "longitude": LON, "latitude": LAT,
                                    "level": np.array(LEVELS)}).astype(np.float32)


def make_forecast(truth: xr.Dataset, inits: np.ndarray, lead_hours: list[int], members: int = 3,
                  seed: int = 1) -> xr.Dataset:
    """WB2 forecast layout: members = truth(valid) + noise growing with lead (NaN-free: beyond the
    truth's end, the last truth time is used, and such pairs must be skipped by the evaluator)."""
    rng = np.random.default_rng(seed)
    leads = np.array(lead_hours, dtype="timedelta64[h]").astype("timedelta64[ns]")
    last = truth.time.values[-1]
    out = {}
    for v, da in truth.data_vars.items():
        arrs = []
        for i in inits:
            valid = np.minimum(i + leads, last)
            y = da.sel(time=valid).transpose("time", ..., "latitude", "longitude").values.astype(np.float64)
            sd = float(da.std()) * 0.1 * (np.asarray(lead_hours) / 24.0).reshape((-1,) + (1,) * (y.ndim - 1))
            arrs.append(y[None] + sd[None] * rng.standard_normal((members,) + y.shape))
        dims = ("time", "member", "prediction_timedelta") + (("level",) if "level" in da.dims else ()) + (
            "latitude", "longitude")
        out[v] = (dims, np.stack(arrs).astype(np.float32))
    return xr.Dataset(out, coords={"time": inits, "member": np.arange(members), "prediction_timedelta": leads,
                                   "longitude": LON, "latitude": LAT, "level": np.array(LEVELS)})


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    truth = make_truth()
    inits = truth.time.values[[0, 3, 10, 26]]  # the last one runs past the truth's end at 48 h
    fc = make_forecast(truth, inits, [0, 6, 24, 48])
    truth.to_zarr(root / "truth.zarr", consolidated=False)
    fc.to_netcdf(root / "forecast.nc")
    return {"root": root, "truth": truth, "forecast": fc, "truth_path": root / "truth.zarr",
            "forecast_path": root / "forecast.nc"}


@pytest.fixture(scope="module")
def result(stores: dict) -> dict:
    return evaluate_forecasts(stores["forecast_path"], stores["truth_path"], stores["root"] / "out",
                              progress=False, plots=False)


def _reference_arrays(truth: xr.Dataset, fc: xr.Dataset, var: str, level: int | None, lead_h: int):
    """Stack the scored (init, lead) samples: ensemble (M, N, lat, lon), truth, truth at init, times."""
    tv = truth[var] if level is None else truth[var].sel(level=level)
    fv = fc[var] if level is None else fc[var].sel(level=level)
    tv = tv.transpose("time", "latitude", "longitude")
    lead = np.timedelta64(lead_h, "h")
    ens, ys, y0, valid = [], [], [], []
    for i in fc.time.values:
        if i + lead not in truth.time.values:
            continue
        ens.append(fv.sel(time=i, prediction_timedelta=lead).values)
        ys.append(tv.sel(time=i + lead).values)
        y0.append(tv.sel(time=i).values)
        valid.append(i + lead)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    return f64(np.stack(ens, 1)), f64(np.stack(ys)), f64(np.stack(y0)), np.array(valid)


def _climatology(truth: xr.Dataset, var: str, level: int | None, valid: np.ndarray) -> np.ndarray:
    """Independent: with 8 days of truth and a 61-day window, the climatology at hour h is the
    mean over every truth sample at hour h."""
    tv = truth[var] if level is None else truth[var].sel(level=level)
    tv = tv.transpose("time", "latitude", "longitude").astype(np.float64)
    hours = pd.DatetimeIndex(truth.time.values).hour
    return np.stack([tv.values[hours == pd.Timestamp(v).hour].mean(0) for v in valid])


@pytest.mark.parametrize("var,level,lead_h", [("geopotential", 500, 24), ("2m_temperature", None, 48),
                                             ("mean_sea_level_pressure", None, 6)])
def test_streaming_equals_pure_functions(stores: dict, result: dict, var: str, level: int | None,
                                         lead_h: int) -> None:
    ds = result["dataset"]
    ch = var if level is None else f"{var}_{level}"
    ens, y, y0, valid = _reference_arrays(stores["truth"], stores["forecast"], var, level, lead_h)
    clim = _climatology(stores["truth"], var, level, valid)
    w = ev.latitude_weights(LAT)
    sel = dict(channel=ch, lead_hours=lead_h)
    assert int(ds["n_samples"].sel(lead_hours=lead_h)) == y.shape[0]
    assert y.shape[0] == (3 if lead_h == 48 else 4)  # the last init has no truth at +48 h
    m = ds.sel(model="mosaic", **sel)
    np.testing.assert_allclose(m["rmse"], ev.ensemble_mean_rmse(ens, y, w, member_axis=0, time_axis=0), rtol=1e-9)
    np.testing.assert_allclose(m["bias"], ev.bias(ens.mean(0), y, w), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m["crps"], ev.crps_fair(ens, y, w), rtol=1e-9)
    np.testing.assert_allclose(m["acc"], ev.acc(ens.mean(0), y, clim, w), rtol=1e-9)
    np.testing.assert_allclose(ds["spread"].sel(**sel), ev.spread(ens, w), rtol=1e-9)
    np.testing.assert_allclose(ds["spread_skill_ratio"].sel(**sel), ev.spread_skill_ratio(ens, y, w), rtol=1e-9)
    np.testing.assert_allclose(ds["spread_skill_ratio_uncorrected"].sel(**sel),
                               ev.spread_skill_ratio(ens, y, w, finite_ensemble_correction=False), rtol=1e-9)
    hist = ds["rank_histogram"].sel(**sel).values
    # float32 data has a few exact ties, broken at random by both: allow a few points of difference.
    np.testing.assert_allclose(hist, ev.rank_histogram(ens, y, w), atol=2e-3)
    # Baselines, by the same definitions.
    p = ds.sel(model="persistence", **sel)
    np.testing.assert_allclose(p["rmse"], ev.rmse(y0, y, w), rtol=1e-9)
    np.testing.assert_allclose(p["crps"], np.mean(ev.spatial_mean(np.abs(y0 - y), w)), rtol=1e-9)
    np.testing.assert_allclose(p["acc"], ev.acc(y0, y, clim, w), rtol=1e-9)
    c = ds.sel(model="climatology", **sel)
    np.testing.assert_allclose(c["rmse"], ev.rmse(clim, y, w), rtol=1e-9)
    assert np.isnan(c["acc"])
    # Spectra: members' spectra averaged over members and samples, then over the band; ratio.
    spec_f = ev.zonal_energy_spectrum(ens, LAT).mean(0)
    spec_y = ev.zonal_energy_spectrum(y, LAT)
    np.testing.assert_allclose(ds["band_energy_spectrum"].sel(source="mosaic", **sel),
                               ev.band_mean(spec_f.mean(0), LAT), rtol=1e-9)
    np.testing.assert_allclose(ds["spectral_ratio"].sel(source="mosaic", **sel),
                               ev.spectral_ratio(spec_f, spec_y, LAT, time_axis=0), rtol=1e-9)
    np.testing.assert_allclose(ds["spectral_ratio"].sel(source="mosaic_ensemble_mean", **sel),
                               ev.spectral_ratio(ev.zonal_energy_spectrum(ens.mean(0), LAT), spec_y, LAT, time_axis=0),
                               rtol=1e-9)
    if ch in ds["spectrum_channel"].values:
        np.testing.assert_allclose(ds["energy_spectrum"].sel(source="truth", spectrum_channel=ch,
                                                             lead_hours=lead_h), spec_y.mean(0), rtol=1e-5)


def test_outputs_written(result: dict) -> None:
    nc = xr.open_dataset(result["netcdf"])
    assert set(nc["model"].values) == {"mosaic", "persistence", "climatology"}
    assert "geopotential_500" in nc["channel"].values and nc["lead_hours"].values.tolist() == [6, 24, 48]
    nc.close()
    table = pd.read_csv(result["scorecard_csv"])
    assert set(table["variable"]) == {"Z500", "T2M", "MSLP"}
    row = table[(table["variable"] == "Z500") & (table["lead_hours"] == 24)].iloc[0]
    assert row["rmse"] < row["rmse_persistence"]
    assert np.isnan(table[table["lead_hours"] == 240]["rmse"]).all()  # not in this forecast
    assert sorted(set(table["lead_hours"])) == [6, 24, 72, 120, 240]  # the first lead comes first
    md = Path(result["scorecard_md"]).read_text()
    assert "| Z500 | geopotential_500 | 24 |" in md and "sqrt((M+1)/M)" in md
    assert not list(Path(result["netcdf"]).parent.glob(".*tmp"))  # atomic writes leave no temp file


def test_store_layout_variants_give_the_same_scores(stores: dict, result: dict, tmp_path: Path) -> None:
    """Descending latitudes, (lat, lon) dim order, -180..180 longitudes, zarr forecast, 'realization'."""
    truth = stores["truth"].isel(latitude=slice(None, None, -1)).transpose("time", "level", "latitude", "longitude")
    truth = truth.assign_coords(longitude=((truth.longitude + 180) % 360) - 180)
    fc = stores["forecast"].isel(latitude=slice(None, None, -1)).rename(member="realization")
    fc.to_zarr(tmp_path / "fc.zarr", consolidated=False)
    out = evaluate_forecasts(tmp_path / "fc.zarr", truth, tmp_path / "out", progress=False, plots=False,
                             variables=["geopotential"], levels=[500], lead_hours=[24])
    a = out["dataset"]
    b = result["dataset"].sel(channel=["geopotential_500"], lead_hours=[24])
    for name in ("rmse", "crps", "acc", "spread_skill_ratio", "spectral_ratio"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-9)


def test_tiny_memory_budget_streams_one_lead_at_a_time(stores: dict, result: dict, tmp_path: Path) -> None:
    out = evaluate_forecasts(stores["forecast_path"], stores["truth_path"], tmp_path, progress=False, plots=False,
                             memory_budget_bytes=1)
    for name in ("rmse", "acc", "crps", "spread", "band_energy_spectrum"):
        np.testing.assert_allclose(out["dataset"][name].values, result["dataset"][name].values, rtol=1e-12)


def test_deterministic_forecast(stores: dict, tmp_path: Path) -> None:
    fc = stores["forecast"].isel(member=0, drop=True)
    out = evaluate_forecasts(fc, stores["truth_path"], tmp_path, progress=False, plots=False,
                             variables=["2m_temperature"], lead_hours=[6, 24])
    ds = out["dataset"]
    assert "spread_skill_ratio" not in ds and "rank_histogram" not in ds
    assert "mosaic_ensemble_mean" not in ds["source"].values
    ens, y, _, _ = _reference_arrays(stores["truth"], stores["forecast"], "2m_temperature", None, 24)
    w = ev.latitude_weights(LAT)
    mae = np.mean(ev.spatial_mean(np.abs(ens[0] - y), w))
    np.testing.assert_allclose(ds["crps"].sel(model="mosaic", channel="2m_temperature", lead_hours=24), mae,
                               rtol=1e-9)


def test_clear_errors(stores: dict, tmp_path: Path) -> None:
    fc, truth = stores["forecast"], stores["truth"]
    with pytest.raises(ValueError, match="variable 'temperature' missing from the forecast"):
        evaluate_forecasts(fc, truth, tmp_path, variables=["temperature"], progress=False, plots=False)
    with pytest.raises(ValueError, match="missing from the truth"):
        evaluate_forecasts(fc, truth.drop_vars("2m_temperature"), tmp_path, variables=["2m_temperature"],
                           progress=False, plots=False)
    coarse = truth.isel(latitude=slice(0, None, 2))
    with pytest.raises(ValueError, match="mismatched grid"):
        evaluate_forecasts(fc, coarse, tmp_path, progress=False, plots=False)
    late = fc.assign_coords(time=fc.time.values + np.timedelta64(365, "D"))
    with pytest.raises(ValueError, match="no overlapping times"):
        evaluate_forecasts(late, truth, tmp_path, progress=False, plots=False)
    with pytest.raises(ValueError, match="lead time 12"):
        evaluate_forecasts(fc, truth, tmp_path, lead_hours=[12], progress=False, plots=False)
    with pytest.raises(ValueError, match="climatology period"):
        evaluate_forecasts(fc, truth, tmp_path, climatology_period=("1990-01-01", "1990-12-31"),
                           progress=False, plots=False)
    with pytest.raises(FileNotFoundError):
        evaluate_forecasts(tmp_path / "nope.zarr", truth, tmp_path, progress=False, plots=False)


def test_wb2_climatology_store(stores: dict, tmp_path: Path) -> None:
    """A (dayofyear, hour) climatology store equal to the computed one gives the same ACC."""
    truth = stores["truth"]
    hours = np.array([0, 6, 12, 18])
    doy = np.arange(1, 367)
    fields = {}
    for v in ("2m_temperature",):
        da = truth[v].astype(np.float64)
        per_hour = np.stack([da.values[pd.DatetimeIndex(truth.time.values).hour == h].mean(0) for h in hours])
        fields[v] = (("hour", "dayofyear", "longitude", "latitude"), np.broadcast_to(
            per_hour[:, None], (4, doy.size) + per_hour.shape[1:]).copy())
    clim = xr.Dataset(fields, coords={"hour": hours, "dayofyear": doy, "longitude": LON, "latitude": LAT})
    clim.to_zarr(tmp_path / "clim.zarr", consolidated=False)
    kw = dict(variables=["2m_temperature"], lead_hours=[24], progress=False, plots=False)
    a = evaluate_forecasts(stores["forecast"], truth, tmp_path / "a", climatology=tmp_path / "clim.zarr", **kw)
    b = evaluate_forecasts(stores["forecast"], truth, tmp_path / "b", **kw)
    np.testing.assert_allclose(a["dataset"]["acc"], b["dataset"]["acc"], rtol=1e-6)


def _demo_forecast(truth: xr.Dataset, inits: np.ndarray, lead_hours: list[int], members: int) -> xr.Dataset:
    """An ensemble "forecast" of the demo store: truth + smooth perturbations growing with lead,
    members slightly smoothed zonally (so spectra show some lost small-scale energy)."""
    rng = np.random.default_rng(7)
    leads = np.array(lead_hours, dtype="timedelta64[h]").astype("timedelta64[ns]")
    out = {}
    for v in ("geopotential", "temperature", "specific_humidity", "2m_temperature", "10m_u_component_of_wind",
              "10m_v_component_of_wind", "mean_sea_level_pressure"):
        da = truth[v]
        if "level" in da.dims:
            da = da.sel(level=[500, 700, 850])
        da = da.transpose("time", ..., "latitude", "longitude")
        sd = float(da.std())
        arrs = []
        for i in inits:
            y = da.sel(time=i + leads).values.astype(np.float64)
            noise = rng.standard_normal((members,) + y.shape)
            noise = (noise + np.roll(noise, 1, -1) + np.roll(noise, -1, -1)) / 3  # smooth-ish
            growth = 0.15 * sd * np.sqrt(np.asarray(lead_hours) / 24.0).reshape((1, -1) + (1,) * (y.ndim - 1))
            x = y[None] + growth * noise
            x = 0.6 * x + 0.2 * (np.roll(x, 1, -1) + np.roll(x, -1, -1))  # mild zonal smoothing
            arrs.append(x)
        dims = ("time", "member", "prediction_timedelta") + da.dims[1:]
        out[v] = (dims, np.stack(arrs).astype(np.float32), truth[v].attrs)
    coords = {"time": inits, "member": np.arange(members), "prediction_timedelta": leads,
              "latitude": truth.latitude.values, "longitude": truth.longitude.values, "level": [500, 700, 850]}
    return xr.Dataset(out, coords=coords)


def test_cli_evaluate_on_demo_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``mosaic-jax evaluate`` end to end: scorecard, NetCDF and PNGs."""
    truth_path = tmp_path / "truth.zarr"
    if importlib.util.find_spec("mosaic_jax.data") is not None:
        from mosaic_jax.data import make_demo_data

        make_demo_data(truth_path, resolution_deg=7.5, start="2020-01-01", end="2020-01-13T18:00", freq_hours=6)
    else:  # the data layer not built yet: our own WB2-like store
        make_truth(days=13).to_zarr(truth_path, consolidated=False)
    truth = xr.open_zarr(truth_path)
    inits = truth.time.values[[0, 2]]
    fc = _demo_forecast(truth, inits, [24, 72, 120, 240], members=4)
    fc.to_zarr(tmp_path / "forecast.zarr", consolidated=False)
    out = tmp_path / "eval"
    status = cli.main(["evaluate", "--forecast", str(tmp_path / "forecast.zarr"), "--truth", str(truth_path),
                       "--out", str(out), "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "scorecard.md" in printed
    for name in ("metrics.nc", "scorecard.md", "scorecard.csv", "metrics_vs_lead.png", "spectra_Z500.png",
                 "maps_Z500.png", "spectra_T2M.png"):
        assert (out / name).exists(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "scorecard.csv")
    assert {"Z500", "T850", "T2M", "U10", "V10", "Q700", "MSLP"} <= set(table["variable"])
    assert sorted(set(table["lead_hours"])) == [24, 72, 120, 240]
    assert table["rmse"].notna().all()
    # A user error is reported, not raised.
    assert cli.main(["evaluate", "--forecast", str(tmp_path / "forecast.zarr"), "--truth", str(truth_path),
                     "--out", str(out), "--variables", "vorticity", "--no-progress"]) == 2
    assert "vorticity" in capsys.readouterr().err
    assert math.isfinite(float(table["acc"].iloc[0]))
