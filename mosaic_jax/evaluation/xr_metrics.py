"""xarray wrappers of ``metrics`` and ``spectra``: named dims instead of axes.

Inputs need ``latitude`` and ``longitude`` dims (latitudes in any order: sorted here) and
share every other dim with the truth; the ensemble has one more dim (``member_dim``). The
time mean runs over ``time_dim`` (pass ``None`` to keep per-sample values, or when the
truth has no time dim). Coordinates must match exactly (``xr.align(join="exact")``). For a
WB2 forecast, select one ``prediction_timedelta`` and give the truth at the valid times
with the forecast's ``time`` coordinate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from mosaic_jax.evaluation import metrics, spectra

_SPACE = ("latitude", "longitude")


def _prepare(truth: xr.DataArray, others: list[xr.DataArray | None], time_dim: str | None,
             member_dim: str | None) -> tuple[xr.DataArray, list[Any], list[str], dict[str, Any]]:
    for d in _SPACE:
        if d not in truth.dims:
            raise ValueError(f"truth lacks dimension {d!r} (dims: {truth.dims})")
    if time_dim is not None and time_dim not in truth.dims:
        time_dim = None
    truth = truth.sortby("latitude")
    rest = [d for d in truth.dims if d not in (*_SPACE, time_dim)]
    order = ([time_dim] if time_dim else []) + rest + list(_SPACE)
    y = truth.transpose(*order)
    out = []
    for o in others:
        if o is None:
            out.append(None)
            continue
        o = o.sortby("latitude")
        has_member = member_dim is not None and member_dim in o.dims
        o = o.transpose(*(([member_dim] if has_member else []) + order))
        xr.align(o, y, join="exact", exclude=[member_dim] if has_member else [])
        out.append(o.values)
    coords = {d: y[d] for d in rest if d in y.coords}
    return y, out, rest, {"coords": coords, "time_axis": 0 if time_dim else None}


def _wrap(fn: Callable[..., Any], truth: xr.DataArray, others: list[xr.DataArray | None], *, time_dim: str | None,
          member_dim: str | None = None, name: str, **kw: Any) -> xr.DataArray:
    y, arrays, rest, info = _prepare(truth, others, time_dim, member_dim)
    w = metrics.latitude_weights(y["latitude"].values)
    res = fn(*arrays, y.values, w, time_axis=info["time_axis"], lat_axis=-2, lon_axis=-1, **kw)
    return xr.DataArray(np.asarray(res), dims=rest, coords=info["coords"], name=name)


def rmse(forecast: xr.DataArray, truth: xr.DataArray, *, time_dim: str | None = "time") -> xr.DataArray:
    return _wrap(metrics.rmse, truth, [forecast], time_dim=time_dim, name="rmse")


def bias(forecast: xr.DataArray, truth: xr.DataArray, *, time_dim: str | None = "time") -> xr.DataArray:
    return _wrap(metrics.bias, truth, [forecast], time_dim=time_dim, name="bias")


def acc(forecast: xr.DataArray, truth: xr.DataArray, climatology: xr.DataArray, *,
        time_dim: str | None = "time") -> xr.DataArray:
    def fn(f, c, y, w, **kw):  # argument order of metrics.acc
        return metrics.acc(f, y, c, w, **kw)

    return _wrap(fn, truth, [forecast, climatology], time_dim=time_dim, name="acc")


def crps_fair(ensemble: xr.DataArray, truth: xr.DataArray, *, member_dim: str = "member",
              time_dim: str | None = "time") -> xr.DataArray:
    return _wrap(metrics.crps_fair, truth, [ensemble], time_dim=time_dim, member_dim=member_dim, name="crps",
                 member_axis=0)


def ensemble_mean_rmse(ensemble: xr.DataArray, truth: xr.DataArray, *, member_dim: str = "member",
                       time_dim: str | None = "time") -> xr.DataArray:
    return _wrap(metrics.ensemble_mean_rmse, truth, [ensemble], time_dim=time_dim, member_dim=member_dim,
                 name="ensemble_mean_rmse", member_axis=0)


def spread(ensemble: xr.DataArray, *, member_dim: str = "member", time_dim: str | None = "time") -> xr.DataArray:
    template = ensemble.isel({member_dim: 0}, drop=True)

    def fn(x, _y, w, **kw):
        return metrics.spread(x, w, **kw)

    return _wrap(fn, template, [ensemble], time_dim=time_dim, member_dim=member_dim, name="spread", member_axis=0)


def spread_skill_ratio(ensemble: xr.DataArray, truth: xr.DataArray, *, member_dim: str = "member",
                       time_dim: str | None = "time", finite_ensemble_correction: bool = True) -> xr.DataArray:
    return _wrap(metrics.spread_skill_ratio, truth, [ensemble], time_dim=time_dim, member_dim=member_dim,
                 name="spread_skill_ratio", member_axis=0, finite_ensemble_correction=finite_ensemble_correction)


def rank_histogram(ensemble: xr.DataArray, truth: xr.DataArray, *, member_dim: str = "member",
                   seed: int = 0) -> xr.DataArray:
    """Area-weighted rank histogram over every non-member dim."""
    y, (x,), _, _ = _prepare(truth, [ensemble], None, member_dim)
    w = metrics.latitude_weights(y["latitude"].values)
    h = metrics.rank_histogram(x, y.values, w, member_axis=0, lat_axis=-2, rng=seed)
    return xr.DataArray(h, dims=["rank"], coords={"rank": np.arange(h.size)}, name="rank_histogram")


def zonal_energy_spectrum(x: xr.DataArray, radius_km: float = spectra.EARTH_RADIUS_KM) -> xr.DataArray:
    """Spectrum with ``longitude`` replaced by ``zonal_wavenumber``; ``wavelength_km`` as a coordinate."""
    lat = x["latitude"].values
    dims = [d for d in x.dims if d != "longitude"] + ["longitude"]
    x = x.transpose(*dims)
    s = spectra.zonal_energy_spectrum(x.values, lat, lat_axis=dims.index("latitude"), lon_axis=-1,
                                      radius_km=radius_km)
    out_dims = dims[:-1] + ["zonal_wavenumber"]
    coords = {d: x[d] for d in dims[:-1] if d in x.coords}
    coords["zonal_wavenumber"] = np.arange(s.shape[-1])
    coords["wavelength_km"] = (("latitude", "zonal_wavenumber"),
                               spectra.wavelength_km(lat, x.sizes["longitude"], radius_km))
    return xr.DataArray(np.asarray(s), dims=out_dims, coords=coords, name=f"{x.name or 'x'}_energy_spectrum")
