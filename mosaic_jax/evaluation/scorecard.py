"""Headline scorecard (Z500, T850, T2M, U10, V10, Q700, MSLP at 24/72/120/240 h, and at the
forecast's first lead when that is shorter, e.g. +6 h for a 6-hourly model).

One row per (variable, lead); lead times the forecast does not reach are kept with NaN
(shown as ``n/a``), so scorecards of different runs line up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from mosaic_jax.evaluation.evaluate import HEADLINE, SCORECARD_LEADS


def small_scale_ratio(ds: xr.Dataset, source: str) -> xr.DataArray:
    """Energy at wavenumbers ``k > n_lon/4`` (the short-wavelength half), forecast over truth.

    A ratio of summed band-mean energies, not a mean of per-k ratios: a nearly empty truth
    bin (e.g. at the Nyquist wavenumber of a band-limited field) cannot dominate it.
    """
    k = ds["zonal_wavenumber"]
    small = k > int(k.max()) / 2
    spec = ds["band_energy_spectrum"].where(small).sum("zonal_wavenumber")
    return spec.sel(source=source) / spec.sel(source="truth")


def scorecard_leads(lead_hours: np.ndarray) -> tuple[float, ...]:
    """``SCORECARD_LEADS``, preceded by the first forecast lead when it comes before them."""
    first = float(np.min(lead_hours)) if np.size(lead_hours) else float("inf")
    return ((first,) if first < SCORECARD_LEADS[0] else ()) + tuple(float(h) for h in SCORECARD_LEADS)


def scorecard_table(ds: xr.Dataset, model: str) -> pd.DataFrame:
    """The scorecard as a wide table: one row per headline channel and scorecard lead."""
    rows = []
    ensemble = "spread_skill_ratio" in ds
    ssr_small = small_scale_ratio(ds, model)
    for label, ch in HEADLINE.items():
        if ch not in ds["channel"].values:
            continue
        for lead in scorecard_leads(ds["lead_hours"].values):
            hit = np.flatnonzero(np.isclose(ds["lead_hours"].values, lead))

            def get(name: str, m: str | None = None, _hit=hit, _ch=ch) -> float:
                if _hit.size == 0:
                    return float("nan")
                da = ds[name] if m is None else ds[name].sel(model=m)
                return float(da.sel(channel=_ch).isel(lead_hours=int(_hit[0])))

            row = {
                "variable": label, "channel": ch, "lead_hours": lead,
                "rmse": get("rmse", model),
                "rmse_persistence": get("rmse", "persistence"),
                "rmse_climatology": get("rmse", "climatology"),
                "acc": get("acc", model),
                "acc_persistence": get("acc", "persistence"),
                "crps": get("crps", model),
                "crps_climatology": get("crps", "climatology"),
                "bias": get("bias", model),
                "spread_skill_ratio": get("spread_skill_ratio") if ensemble else float("nan"),
                "spectral_ratio_small_scales": (float(ssr_small.sel(channel=ch).isel(lead_hours=int(hit[0])))
                                                if hit.size else float("nan")),
            }
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(x: object) -> str:
    if isinstance(x, (float, np.floating)):
        return "n/a" if not np.isfinite(x) else f"{x:.4g}"
    return str(x)


def to_markdown(table: pd.DataFrame, ds: xr.Dataset, model: str) -> str:
    """Markdown rendering of ``scorecard_table`` with the definitions underneath."""
    cols = list(table.columns)
    lines = [f"# Scorecard: {model}", "",
             f"{ds.attrs.get('n_members', 1)} member(s); init times {ds.attrs.get('init_times', '?')}; "
             f"climatology {ds.attrs.get('climatology', '?')}.", ""]
    if table.empty:
        lines.append("No headline variable was evaluated.")
    else:
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        for _, r in table.iterrows():
            lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    ssr_note = (ds["spread_skill_ratio"].attrs.get("finite_ensemble_correction", "")
                if "spread_skill_ratio" in ds else "")
    lines += [
        "",
        "- rmse: sqrt of the time-mean area-weighted MSE (of the ensemble mean for ensembles); "
        "persistence / climatology are the baselines, scored on the same samples.",
        "- acc: uncentred anomaly correlation against the climatology at the valid time, averaged over inits.",
        "- crps: fair ensemble CRPS (MAE for one-member forecasts such as the climatology baseline).",
        f"- spread_skill_ratio: spread / ensemble-mean RMSE; finite-ensemble correction: {ssr_note or 'n/a'}.",
        f"- spectral_ratio_small_scales: member spectrum / truth spectrum in the band "
        f"{ds.attrs.get('spectra_band_deg', '')}: energy at zonal wavenumbers k > n_lon/4 (the shorter-wavelength "
        "half), forecast members over truth (1 = energy kept, < 1 = blurred, > 1 = noisy).",
        "",
    ]
    return "\n".join(lines)
