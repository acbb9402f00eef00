"""PNG plots of an evaluation: metrics vs lead time, energy spectra and spectral ratios, maps.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas), never pyplot, so no global
backend is touched and nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.figure import Figure

from mosaic_jax.atomic import atomic_write
from mosaic_jax.evaluation.evaluate import HEADLINE, SCORECARD_LEADS, headline_label

_STYLE = {"persistence": dict(color="tab:gray", ls="--"), "climatology": dict(color="tab:olive", ls=":")}


def _save(fig: Figure, path: Path, dpi: int = 90) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))


def _label(ch: str) -> str:
    lab = headline_label(ch)
    return f"{lab} ({ch})" if lab else ch


def _plot_channels(ds: xr.Dataset, limit: int = 7) -> list[str]:
    chans = [c for c in HEADLINE.values() if c in ds["channel"].values]
    return chans or [str(c) for c in ds["channel"].values[:limit]]


def plot_metrics_vs_lead(ds: xr.Dataset, path: Path, model: str) -> Path:
    """Rows: channels; columns: RMSE, ACC, CRPS (model and baselines), spread-skill ratio."""
    chans = _plot_channels(ds)
    cols = ["rmse", "acc", "crps"] + (["spread_skill_ratio"] if "spread_skill_ratio" in ds else [])
    fig = Figure(figsize=(3.2 * len(cols), 2.3 * len(chans)), layout="constrained")
    axes = fig.subplots(len(chans), len(cols), squeeze=False)
    lead = ds["lead_hours"].values
    for r, ch in enumerate(chans):
        for c, metric in enumerate(cols):
            ax = axes[r, c]
            if metric == "spread_skill_ratio":
                ax.plot(lead, ds[metric].sel(channel=ch), "o-", color="tab:blue", ms=3, label=f"{model} (corrected)")
                ax.plot(lead, ds["spread_skill_ratio_uncorrected"].sel(channel=ch), "-", color="tab:cyan", lw=1,
                        label="uncorrected (WB2)")
                ax.axhline(1.0, color="k", lw=0.8)
            else:
                for m in ds["model"].values:
                    y = ds[metric].sel(model=m, channel=ch)
                    if not np.isfinite(y).any():
                        continue
                    style = _STYLE.get(str(m), dict(color="tab:blue", ls="-", marker="o", ms=3))
                    ax.plot(lead, y, label=str(m), **style)
            if r == 0:
                ax.set_title(metric.replace("_", " ").upper() if metric != "spread_skill_ratio" else "spread / skill")
            if c == 0:
                ax.set_ylabel(_label(ch), fontsize=8)
            if r == len(chans) - 1:
                ax.set_xlabel("lead time (h)")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.legend(fontsize=6)
    fig.suptitle(f"{model}: scores vs lead time ({ds.attrs.get('init_times', '')})", fontsize=9)
    return _save(fig, path)


def _spectrum_leads(lead: np.ndarray, n: int = 4) -> list[int]:
    hit = [int(np.flatnonzero(np.isclose(lead, h))[0]) for h in SCORECARD_LEADS if np.isclose(lead, h).any()]
    if hit:
        return hit
    return sorted({int(round(x)) for x in np.linspace(0, lead.size - 1, min(n, lead.size))})


def plot_spectra(ds: xr.Dataset, ch: str, path: Path, model: str, dpi: int = 90) -> Path:
    """Left: band-mean energy spectra (truth, members, ensemble mean); right: spectral ratio."""
    lead = ds["lead_hours"].values
    idx = _spectrum_leads(lead)
    k = ds["zonal_wavenumber"].values
    keep = k > 0
    wl = ds["band_wavelength_km"].values[keep]
    spec = ds["band_energy_spectrum"].sel(channel=ch)
    ratio = ds["spectral_ratio"].sel(channel=ch)
    ens_mean = f"{model}_ensemble_mean"
    has_mean = ens_mean in ds["source"].values
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.loglog(wl, spec.sel(source="truth").isel(lead_hours=idx[-1]).values[keep], color="k", lw=2.2, label="truth")
    for n, j in enumerate(idx):
        col = cmap(n / max(1, len(idx) - 1))
        h = f"{lead[j]:g} h"
        ax1.loglog(wl, spec.sel(source=model).isel(lead_hours=j).values[keep], color=col, label=f"members {h}")
        ax2.semilogx(wl, ratio.sel(source=model).isel(lead_hours=j).values[keep], color=col, label=f"members {h}")
        if has_mean:
            ax1.loglog(wl, spec.sel(source=ens_mean).isel(lead_hours=j).values[keep], color=col, ls="--", lw=1)
            ax2.semilogx(wl, ratio.sel(source=ens_mean).isel(lead_hours=j).values[keep], color=col, ls="--", lw=1,
                         label=f"ens. mean {h}")
    for ax in (ax1, ax2):
        ax.invert_xaxis()
        ax.set_xlabel("wavelength (km, band mean)")
        ax.grid(alpha=0.3, which="both")
    ax1.set_ylabel("energy (m x units^2)")
    ax1.set_title(f"{_label(ch)}: zonal energy spectrum, {ds.attrs.get('spectra_band_deg', '')}", fontsize=9)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_ylabel("forecast / truth")
    ax2.set_title("spectral ratio (solid: members, dashed: ensemble mean)", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7, ncol=2)
    return _save(fig, path, dpi=dpi)


def plot_maps(ds: xr.Dataset, ch: str, entries: list[dict[str, Any]], path: Path, model: str) -> Path:
    """Rows: leads; columns: truth, ensemble mean, member 0 (shared colour scale per row)."""
    lat, lon = ds["latitude"].values, ds["longitude"].values
    entries = sorted(entries, key=lambda e: e["lead_hours"])
    fig = Figure(figsize=(12, 2.6 * len(entries) + 0.4), layout="constrained")
    axes = fig.subplots(len(entries), 3, squeeze=False)
    for r, e in enumerate(entries):
        lo_, hi_ = np.percentile(e["truth"], [1, 99])
        for c, (key, title) in enumerate((("truth", "truth"), ("ensemble_mean", "ensemble mean"),
                                          ("member", "member 0"))):
            ax = axes[r, c]
            im = ax.pcolormesh(lon, lat, e[key], vmin=lo_, vmax=hi_, cmap="RdYlBu_r", shading="nearest")
            ax.set_title(f"{title}, +{e['lead_hours']:g} h", fontsize=9)
            ax.set_xticks([0, 90, 180, 270, 360])
            ax.set_yticks([-90, -45, 0, 45, 90])
            ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=axes[r, :].tolist(), shrink=0.9)
    fig.suptitle(f"{model}: {_label(ch)}", fontsize=10)
    return _save(fig, path)


def plot_all(ds: xr.Dataset, maps: dict[str, list[dict[str, Any]]], out_dir: Path, model: str) -> list[Path]:
    """Every plot of an evaluation; returns the PNG paths."""
    out = [plot_metrics_vs_lead(ds, out_dir / "metrics_vs_lead.png", model)]
    for ch in ds["spectrum_channel"].values:
        ch = str(ch)
        name = headline_label(ch) or ch
        out.append(plot_spectra(ds, ch, out_dir / f"spectra_{name}.png", model))
        if maps.get(ch):
            out.append(plot_maps(ds, ch, maps[ch], out_dir / f"maps_{name}.png", model))
    return out
