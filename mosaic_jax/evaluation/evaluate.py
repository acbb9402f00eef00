"""Streaming evaluation of a forecast store against a WeatherBench2 truth store.

One init time at a time (and, within it, as many leads as fit a memory budget), the model
and the two baselines (``baselines.py``) go through the same per-sample statistics
(``_sample_stats``, built on ``metrics`` and ``spectra``). Per (channel, lead) sums are
accumulated and turned into WB2 metrics at the end: e.g. RMSE is the square root of the
mean over init times of the per-init weighted MSE, exactly ``metrics.rmse`` over a time axis.

Samples: an (init, lead) pair is scored when the truth holds both its valid time and its
init time (persistence needs the latter), so the model and both baselines are scored on
identical samples. Leads of 0 h are skipped unless asked for.

Outputs (in ``out_dir``, each written to a temporary name and renamed):
``metrics.nc`` (tidy: dims model/source, channel, lead_hours, ...), ``scorecard.md`` and
``scorecard.csv`` (headline variables at 24/72/120/240 h), and PNG plots (``plots.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mosaic_jax import variables as mv
from mosaic_jax.atomic import atomic_write
from mosaic_jax.evaluation import baselines, metrics, spectra, stores
from mosaic_jax.evaluation.climatology import StoreClimatology, TruthClimatology

HEADLINE: dict[str, str] = {
    "Z500": "geopotential_500",
    "T850": "temperature_850",
    "T2M": "2m_temperature",
    "U10": "10m_u_component_of_wind",
    "V10": "10m_v_component_of_wind",
    "Q700": "specific_humidity_700",
    "MSLP": "mean_sea_level_pressure",
}
SCORECARD_LEADS: tuple[int, ...] = (24, 72, 120, 240)
_F_ORDER = ("member", "prediction_timedelta", "level", "latitude", "longitude")
_T_ORDER = ("time", "level", "latitude", "longitude")


def channel_name(variable: str, level: float | None) -> str:
    """``geopotential`` at 500 -> ``geopotential_500`` (the model's channel naming)."""
    return variable if level is None else f"{variable}_{int(round(float(level)))}"


def headline_label(channel: str) -> str | None:
    for label, ch in HEADLINE.items():
        if ch == channel:
            return label
    return None


@dataclasses.dataclass(frozen=True)
class _VarPlan:
    name: str
    levels: tuple[float, ...] | None  # None: a surface variable
    start: int  # index of its first channel

    @property
    def channels(self) -> list[str]:
        return [channel_name(self.name, lv) for lv in (self.levels or (None,))]


def _variable_order(name: str) -> tuple[int, str]:
    known = mv.SURFACE_VARIABLES + mv.ATMOSPHERIC_VARIABLES
    return (known.index(name) if name in known else len(known), name)


def _plan_variables(fc: xr.Dataset, truth: xr.Dataset, wanted: Sequence[str] | None,
                    levels: Sequence[float] | None) -> list[_VarPlan]:
    def gridded(ds: xr.Dataset, need: tuple[str, ...]) -> list[str]:
        return [str(v) for v in ds.data_vars if all(d in ds[v].dims for d in need)]

    fvars = gridded(fc, ("time", "prediction_timedelta", "latitude", "longitude"))
    tvars = gridded(truth, ("time", "latitude", "longitude"))
    if wanted:
        for v in wanted:
            if v not in fvars:
                raise ValueError(f"variable {v!r} missing from the forecast store (has: {', '.join(fvars) or 'none'})")
            if v not in tvars:
                raise ValueError(f"variable {v!r} missing from the truth store (has: {', '.join(tvars) or 'none'})")
        names = list(dict.fromkeys(wanted))
    else:
        names = sorted((v for v in fvars if v in tvars), key=_variable_order)
        if not names:
            raise ValueError(f"forecast and truth stores share no variable (forecast: {fvars}, truth: {tvars})")
    plans, start = [], 0
    for v in names:
        f_has, t_has = "level" in fc[v].dims, "level" in truth[v].dims
        if f_has != t_has:
            raise ValueError(f"variable {v!r}: {'forecast' if f_has else 'truth'} has a level dimension, the other not")
        lv = None
        if f_has:
            common = np.intersect1d(fc["level"].values.astype(float), truth["level"].values.astype(float))
            if levels is not None:
                missing = sorted(set(map(float, levels)) - set(common.tolist()))
                if missing:
                    raise ValueError(f"variable {v!r}: level(s) {missing} not in both stores "
                                     f"(shared levels: {common.tolist()})")
                common = np.array(sorted(map(float, levels)))
            if common.size == 0:
                raise ValueError(f"variable {v!r}: forecast and truth share no pressure level")
            lv = tuple(float(x) for x in common)
        plans.append(_VarPlan(v, lv, start))
        start += len(lv) if lv else 1
    return plans


def _select_leads(fc: xr.Dataset, lead_hours: Sequence[float] | None) -> np.ndarray:
    """Indices into ``prediction_timedelta`` of the leads to score."""
    hours = fc["prediction_timedelta"].values / np.timedelta64(1, "h")
    if lead_hours is None:
        idx = np.flatnonzero(hours > 0)
    else:
        idx = []
        for h in lead_hours:
            hit = np.flatnonzero(np.isclose(hours, float(h)))
            if hit.size == 0:
                raise ValueError(f"lead time {h} h not in the forecast store (has: {hours.tolist()})")
            idx.append(int(hit[0]))
        idx = np.array(sorted(set(idx)))
    if len(idx) == 0:
        raise ValueError("no lead time to score (the forecast has only lead 0)")
    return np.asarray(idx)


def _weighted_rank_counts(ranks: np.ndarray, weights: np.ndarray, m: int) -> np.ndarray:
    """``(lead, level, M+1)`` area-weighted counts of truth ranks ``(lead, level, lat, lon)``."""
    lead, lev = ranks.shape[:2]
    base = (np.arange(lead * lev).reshape(lead, lev, 1, 1) * (m + 1))
    w = np.broadcast_to(weights[None, None, :, None], ranks.shape)
    counts = np.bincount((base + ranks).ravel(), weights=w.ravel(), minlength=lead * lev * (m + 1))
    return counts.reshape(lead, lev, m + 1)


def _sample_stats(ens: np.ndarray, truth: np.ndarray, clim: np.ndarray, weights: np.ndarray, lat: np.ndarray,
                  band: tuple[float, float], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-sample statistics of ``ens (M, lead, level, lat, lon)`` against ``truth (lead, level, lat, lon)``.

    Everything the final metrics need, summed over nothing yet: weighted MSE / error / ACC
    / fair CRPS of each (lead, level), and band-mean spectra of the members (averaged over
    members) and, for ensembles, of the ensemble mean; plus member variance and ranks.
    """
    m = ens.shape[0]
    mean = ens.mean(axis=0)
    no_time = dict(time_axis=None)
    out = {
        "se": metrics.mse(mean, truth, weights, **no_time),
        "err": metrics.bias(mean, truth, weights, **no_time),
        "acc": metrics.acc(mean, truth, clim, weights, **no_time),
        "crps": metrics.crps_fair(ens, truth, weights, member_axis=0, **no_time),
    }
    out["spec"] = spectra.zonal_energy_spectrum(ens, lat).mean(axis=0)  # (lead, level, lat, k)
    if m > 1:
        out["var"] = metrics.ensemble_variance(ens, weights, member_axis=0, **no_time)
        out["rank"] = _weighted_rank_counts(metrics.rank_of_truth(ens, truth, member_axis=0, rng=rng), weights, m)
        out["spec_mean"] = spectra.zonal_energy_spectrum(mean, lat)
    return out


class _Accumulator:
    """Sums over init times of per-sample statistics, indexed ``[channel, lead, ...]``."""

    def __init__(self, models: list[str], sources: list[str], n_ch: int, n_lead: int, n_members: int, n_k: int,
                 n_lat: int, n_spec_ch: int) -> None:
        z = lambda *s: np.zeros(s)  # noqa: E731
        self.count = z(n_lead)
        self.stats = {m: {k: z(n_ch, n_lead) for k in ("se", "err", "acc", "acc_n", "crps")} for m in models}
        self.var = z(n_ch, n_lead)
        self.rank = z(n_ch, n_lead, n_members + 1)
        self.band = {s: z(n_ch, n_lead, n_k) for s in sources}
        self.lat = {s: z(n_spec_ch, n_lead, n_lat, n_k) for s in sources}

    def add_spectrum(self, source: str, spec: np.ndarray, ch: slice, leads: np.ndarray, lat: np.ndarray,
                     band: tuple[float, float], spec_rows: list[tuple[int, int]]) -> None:
        self.band[source][ch, leads] += np.moveaxis(spectra.band_mean(spec, lat, lat_axis=-2, band=band), 0, 1)
        for j, si in spec_rows:
            self.lat[source][si, leads] += spec[:, j]


def _open_inputs(forecast_path: Any, truth_path: Any) -> tuple[xr.Dataset, xr.Dataset]:
    fc = stores.prepare_forecast(stores.open_store(forecast_path))
    truth = stores.prepare_truth(stores.open_store(truth_path))
    stores.check_same_grid(fc, truth, "forecast store", "truth store")
    stores.check_regular_longitudes(fc["longitude"].values)
    return fc, truth


def evaluate_forecasts(
    forecast_path: str | Path | xr.Dataset,
    truth_path: str | Path | xr.Dataset,
    out_dir: str | Path,
    *,
    variables: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    lead_hours: Sequence[float] | None = None,
    climatology: str | Path | xr.Dataset | None = None,
    climatology_period: tuple[str, str] | None = None,
    climatology_window_days: int = 61,
    band: tuple[float, float] = spectra.DEFAULT_BAND,
    model_name: str = "mosaic",
    finite_ensemble_correction: bool = True,
    memory_budget_bytes: int = 2**30,
    progress: bool = True,
    plots: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a forecast store against a WB2 truth store; write metrics, scorecard and plots.

    ``climatology``: ``None`` computes one from the truth over ``climatology_period``
    (default: all truth times; see ``climatology.TruthClimatology``), or a WB2 climatology
    store path / Dataset. ``memory_budget_bytes`` bounds the working set of one chunk of leads
    (a single lead is always read whole) and the truth cache. Returns ``{"netcdf",
    "scorecard_md", "scorecard_csv": Path, "plots": [Path], "dataset": xr.Dataset}``.
    """
    from tqdm.auto import tqdm

    if model_name in baselines.BASELINES or model_name == "truth":
        raise ValueError(f"model name {model_name!r} is reserved")
    fc, truth = _open_inputs(forecast_path, truth_path)
    plans = _plan_variables(fc, truth, variables, levels)
    lead_idx = _select_leads(fc, lead_hours)
    leads_td = fc["prediction_timedelta"].values[lead_idx]
    lead_h = leads_td / np.timedelta64(1, "h")
    inits = fc["time"].values
    truth_times = truth["time"].values
    t_index = pd.Index(truth_times)

    # Which (init, lead) pairs have truth at the valid time and at the init time.
    valid = inits[:, None] + leads_td[None, :]
    ok = np.isin(valid, truth_times) & np.isin(inits, truth_times)[:, None]
    if not ok.any():
        raise ValueError(
            f"no overlapping times: forecast inits {inits.min()} .. {inits.max()} with leads "
            f"{lead_h.min():g}..{lead_h.max():g} h need truth at init and valid times; truth covers "
            f"{truth_times.min()} .. {truth_times.max()} (every "
            f"{(np.diff(truth_times).min() / np.timedelta64(1, 'h')) if truth_times.size > 1 else 0:g} h)")

    if climatology is None:
        clim = TruthClimatology(truth, climatology_period, climatology_window_days)
    else:
        clim = StoreClimatology(climatology, truth)

    lat = fc["latitude"].values.astype(np.float64)
    lon = fc["longitude"].values.astype(np.float64)
    w = metrics.latitude_weights(lat)
    n_k = lon.size // 2 + 1
    ensemble = "member" in fc.dims and fc.sizes["member"] > 1
    n_members = fc.sizes["member"] if "member" in fc.dims else 1
    channels = [c for p in plans for c in p.channels]
    spec_channels = [c for c in HEADLINE.values() if c in channels]
    models = [model_name, *baselines.BASELINES]
    sources = [model_name] + ([f"{model_name}_ensemble_mean"] if ensemble else []) + [*baselines.BASELINES, "truth"]
    acc_ = _Accumulator(models, sources, len(channels), lead_h.size, n_members, n_k, lat.size, len(spec_channels))
    rng = np.random.default_rng(seed)
    truth_cache = stores.ByteLRU(memory_budget_bytes // 4)
    maps: dict[str, list[dict[str, Any]]] = {}
    map_leads = _map_leads(lead_h)

    def truth_fields(p: _VarPlan, tidx: np.ndarray) -> np.ndarray:
        """Truth at time indices ``tidx`` as ``(time, level, lat, lon)``; consecutive inits share
        most valid times, so fields are cached (byte-bounded)."""
        got = {int(t): truth_cache.get((p.name, int(t))) for t in tidx}
        missing = [t for t, v in got.items() if v is None]
        if missing:
            da = truth[p.name] if p.levels is None else truth[p.name].sel(level=list(p.levels))
            for t, field in zip(missing, stores.read(da, _T_ORDER, time=np.array(missing)), strict=True):
                got[t] = field
                truth_cache.put((p.name, t), field)
        out = np.stack([got[int(t)] for t in tidx])
        return out if p.levels is not None else out[:, None]

    # Leads per chunk: the forecast chunk is (M, leads, level, lat, lon) float64; spectra, sorting
    # and temporaries take a few times that, hence the factor 6.
    grid_bytes = lat.size * lon.size * 8
    for i in tqdm(range(inits.size), desc="evaluate", unit="init", disable=not progress):
        li = np.flatnonzero(ok[i])
        if li.size == 0:
            continue
        acc_.count[li] += 1
        init_t = t_index.get_loc(inits[i])
        for p in plans:
            n_lev = len(p.levels) if p.levels else 1
            chunk = max(1, int(memory_budget_bytes // (6 * max(n_members, 2) * n_lev * grid_bytes)))
            fda = fc[p.name] if p.levels is None else fc[p.name].sel(level=list(p.levels))
            ch = slice(p.start, p.start + n_lev)
            spec_rows = [(j, spec_channels.index(c)) for j, c in enumerate(p.channels) if c in spec_channels]
            persist = truth_fields(p, np.array([init_t]))[0]
            for c0 in range(0, li.size, chunk):
                sel = li[c0:c0 + chunk]
                ens = stores.read(fda, _F_ORDER, time=i, prediction_timedelta=lead_idx[sel])
                if "member" not in fda.dims:
                    ens = ens[None]
                if p.levels is None:
                    ens = ens[:, :, None]
                y = truth_fields(p, t_index.get_indexer(valid[i, sel]))
                c = clim.fields(p.name, valid[i, sel], p.levels)
                if p.levels is None:
                    c = c[:, None]
                forecasts = {model_name: ens,
                             "persistence": baselines.persistence_forecast(persist, sel.size),
                             "climatology": baselines.climatology_forecast(c)}
                for name, f in forecasts.items():
                    s = _sample_stats(f, y, c, w, lat, band, rng)
                    st = acc_.stats[name]
                    st["se"][ch, sel] += s["se"].T
                    st["err"][ch, sel] += s["err"].T
                    st["acc"][ch, sel] += np.nan_to_num(s["acc"].T)
                    st["acc_n"][ch, sel] += np.isfinite(s["acc"].T)
                    st["crps"][ch, sel] += s["crps"].T
                    acc_.add_spectrum(name, s["spec"], ch, sel, lat, band, spec_rows)
                    if name == model_name and "var" in s:
                        acc_.var[ch, sel] += s["var"].T
                        acc_.rank[ch, sel] += np.moveaxis(s["rank"], 0, 1)
                        acc_.add_spectrum(f"{model_name}_ensemble_mean", s["spec_mean"], ch, sel, lat, band,
                                          spec_rows)
                acc_.add_spectrum("truth", spectra.zonal_energy_spectrum(y, lat), ch, sel, lat, band, spec_rows)
                _capture_maps(maps, p, i, sel, lead_h, map_leads, y, ens, spec_channels)

    ds = _finalize(acc_, models, sources, channels, plans, spec_channels, lead_h, leads_td, lat, lon, w, band,
                   ensemble, n_members, finite_ensemble_correction, model_name)
    ds.attrs.update({
        "forecast": str(forecast_path) if not isinstance(forecast_path, xr.Dataset) else "dataset",
        "truth": str(truth_path) if not isinstance(truth_path, xr.Dataset) else "dataset",
        "climatology": clim.describe(),
        "init_times": f"{_iso(inits.min())} .. {_iso(inits.max())} "
                      f"({int(ok.any(axis=1).sum())} of {inits.size} scored)",
    })
    return write_outputs(ds, maps, Path(out_dir), model_name, plots=plots)


def _iso(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "m"), unit="m")).replace("T", " ")


def _map_leads(lead_h: np.ndarray) -> list[float]:
    """Up to three leads for the maps: the scorecard leads present, else first/middle/last."""
    hit = [float(h) for h in (24, 120, 240) if np.any(np.isclose(lead_h, h))]
    if hit:
        return hit
    pick = sorted({0, lead_h.size // 2, lead_h.size - 1})
    return [float(lead_h[j]) for j in pick]


def _capture_maps(maps: dict, p: _VarPlan, i: int, sel: np.ndarray, lead_h: np.ndarray, map_leads: list[float],
                  y: np.ndarray, ens: np.ndarray, spec_channels: list[str]) -> None:
    """Keep truth / ensemble mean / member 0 fields of the first scored init, for the maps."""
    for j, c in enumerate(p.channels):
        if c not in spec_channels:
            continue
        entries = maps.setdefault(c, [])
        if entries and entries[0]["init_index"] != i:
            continue
        for k, h in enumerate(lead_h[sel]):
            if any(np.isclose(h, m) for m in map_leads):
                entries.append({"init_index": i, "lead_hours": float(h), "truth": y[k, j].astype(np.float32),
                                "ensemble_mean": ens[:, k, j].mean(axis=0).astype(np.float32),
                                "member": ens[0, k, j].astype(np.float32)})


def _finalize(a: _Accumulator, models: list[str], sources: list[str], channels: list[str], plans: list[_VarPlan],
              spec_channels: list[str], lead_h: np.ndarray, leads_td: np.ndarray, lat: np.ndarray, lon: np.ndarray,
              w: np.ndarray, band: tuple[float, float], ensemble: bool, n_members: int, correction: bool,
              model_name: str) -> xr.Dataset:
    n = a.count[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        def per_model(fn: Callable[[dict], np.ndarray]) -> np.ndarray:
            return np.stack([fn(a.stats[m]) for m in models])

        rmse = per_model(lambda s: np.sqrt(s["se"] / n))
        data: dict[str, Any] = {
            "rmse": (("model", "channel", "lead_hours"), rmse, {
                "long_name": "RMSE (of the ensemble mean for ensembles)",
                "definition": "sqrt(mean over inits of the area-weighted MSE)"}),
            "bias": (("model", "channel", "lead_hours"), per_model(lambda s: s["err"] / n),
                     {"long_name": "mean error forecast - truth (area-weighted)"}),
            "acc": (("model", "channel", "lead_hours"), per_model(lambda s: s["acc"] / s["acc_n"]),
                    {"long_name": "anomaly correlation coefficient (uncentred), mean over inits",
                     "note": "NaN for the climatology baseline (zero anomaly)"}),
            "crps": (("model", "channel", "lead_hours"), per_model(lambda s: s["crps"] / n),
                     {"long_name": "fair ensemble CRPS (area-weighted); MAE for one-member forecasts"}),
            "n_samples": (("lead_hours",), a.count.astype(np.int64), {"long_name": "init times scored"}),
        }
        if ensemble:
            spread = np.sqrt(a.var / n)
            ssr = spread / rmse[0]
            corr = np.sqrt((n_members + 1) / n_members)
            data["spread"] = (("channel", "lead_hours"), spread,
                              {"long_name": "ensemble spread: sqrt(mean area-weighted unbiased member variance)"})
            data["spread_skill_ratio"] = (("channel", "lead_hours"), ssr * corr if correction else ssr, {
                "long_name": "spread / ensemble-mean RMSE",
                "finite_ensemble_correction": f"multiplied by sqrt((M+1)/M) = {corr:.6f}" if correction else "none"})
            data["spread_skill_ratio_uncorrected"] = (
                ("channel", "lead_hours"), ssr, {"long_name": "spread / ensemble-mean RMSE, as WB2 (no correction)"})
            data["rank_histogram"] = (("channel", "lead_hours", "rank"), a.rank / a.rank.sum(-1, keepdims=True),
                                      {"long_name": "area-weighted frequency of the truth's rank among members"})
        band_spec = np.stack([a.band[s] / n[..., None] for s in sources])
        data["band_energy_spectrum"] = (("source", "channel", "lead_hours", "zonal_wavenumber"), band_spec, {
            "long_name": f"zonal energy spectrum averaged over {band[0]:g} <= |lat| <= {band[1]:g}",
            "units": "m * (variable units)^2",
            "note": "model source: mean of the members' spectra; *_ensemble_mean: spectrum of the ensemble mean"})
        data["spectral_ratio"] = (("source", "channel", "lead_hours", "zonal_wavenumber"), band_spec / band_spec[-1],
                                  {"long_name": "band-mean spectrum / band-mean truth spectrum"})
        data["energy_spectrum"] = (
            ("source", "spectrum_channel", "lead_hours", "latitude", "zonal_wavenumber"),
            np.stack([a.lat[s] / n[..., None, None] for s in sources]).astype(np.float32),
            {"long_name": "zonal energy spectrum per latitude row (headline channels)"})
    data["wavelength_km"] = (("latitude", "zonal_wavenumber"), spectra.wavelength_km(lat, lon.size),
                             {"long_name": "circumference of the row / k", "units": "km"})
    data["band_wavelength_km"] = (("zonal_wavenumber",), spectra.band_wavelength_km(lat, lon.size, band),
                                  {"long_name": "mean circumference of the band's rows / k", "units": "km"})
    data["latitude_weight"] = (("latitude",), w, {"long_name": "WB2 area weight (mean 1)"})
    ch_var = [p.name for p in plans for _ in p.channels]
    ch_lev = [np.nan if lv is None else lv for p in plans for lv in (p.levels or (None,))]
    coords = {
        "model": models, "source": sources, "channel": channels, "lead_hours": lead_h,
        "prediction_timedelta": ("lead_hours", leads_td), "variable": ("channel", ch_var),
        "level": ("channel", np.array(ch_lev, dtype=np.float64)), "spectrum_channel": spec_channels,
        "latitude": lat, "longitude": lon, "zonal_wavenumber": np.arange(lon.size // 2 + 1),
    }
    if ensemble:
        coords["rank"] = np.arange(n_members + 1)
    ds = xr.Dataset({k: xr.Variable(v[0], v[1], v[2]) for k, v in data.items()}, coords=coords)
    ds.attrs.update({
        "title": "mosaic-jax evaluation (WeatherBench2 definitions)",
        "model": model_name,
        "n_members": n_members,
        "latitude_weights": "cell-area weights from latitude cell bounds, normalised to mean 1 (WB2)",
        "spectra_band_deg": f"{band[0]:g} <= |latitude| <= {band[1]:g}, rows weighted equally",
        "earth_radius_km": spectra.EARTH_RADIUS_KM,
        "samples": "an (init, lead) pair is scored when truth has its valid and init times",
    })
    return ds


def write_outputs(ds: xr.Dataset, maps: dict, out_dir: Path, model_name: str, plots: bool = True) -> dict[str, Any]:
    """Write ``metrics.nc``, the scorecard and (optionally) the plots; return their paths."""
    from mosaic_jax.evaluation import scorecard

    out_dir.mkdir(parents=True, exist_ok=True)
    nc = atomic_write(out_dir / "metrics.nc", lambda p: ds.to_netcdf(p, engine="h5netcdf"))
    table = scorecard.scorecard_table(ds, model_name)
    csv = atomic_write(out_dir / "scorecard.csv", lambda p: table.to_csv(p, index=False, float_format="%.6g"))
    md = atomic_write(out_dir / "scorecard.md",
                      lambda p: p.write_text(scorecard.to_markdown(table, ds, model_name)))
    pngs: list[Path] = []
    if plots:
        from mosaic_jax.evaluation import plots as plotting

        pngs = plotting.plot_all(ds, maps, out_dir, model_name)
    return {"netcdf": nc, "scorecard_md": md, "scorecard_csv": csv, "plots": pngs, "dataset": ds}
