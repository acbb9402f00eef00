"""Energy spectra of every ensemble member against the truth (Mosaic's "spectral fidelity" claim).

The claim: each member keeps the atmosphere's energy at all resolved scales, while the
ensemble mean (like any deterministic MSE-trained forecast) loses small-scale energy.
This script measures it with the evaluation package's WB2 zonal spectra: for each channel
and lead, the band-mean spectrum (default 30 <= |lat| <= 60) of *each member separately*,
of the ensemble mean and of the truth, averaged over init times (streamed one at a time).

Outputs (``--out``, default ``experiments/results``), prefixed ``spectra_<name>``:
  ``.csv``  tidy: channel, lead_hours, source (member_i / ensemble_mean / truth), k, wavelength_km, energy
  ``.md``   per channel and lead: small-scale energy ratio (k > n_lon/4) of the worst and best
            member and of the ensemble mean
  ``.png``  rows = channels; left: spectra at the longest lead (each member a thin line),
            right: small-scale ratio vs lead for each member and the ensemble mean

Usage:
  python experiments/spectra.py --forecast FC.zarr --truth TRUTH.zarr [--name mosaic]
  python experiments/spectra.py --demo   # demo store + a toy spectral ensemble (see toy_ensemble)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from mosaic_jax.evaluation import spectra, stores
from mosaic_jax.evaluation.evaluate import HEADLINE, atomic_write, channel_name, headline_label

RESULTS = Path(__file__).resolve().parent / "results"


def member_spectra(forecast: xr.Dataset, truth: xr.Dataset, channels: list[str], band: tuple[float, float],
                   lead_hours: list[float] | None = None) -> pd.DataFrame:
    """Band-mean spectra per member, ensemble mean and truth, averaged over the scored inits."""
    from tqdm.auto import tqdm

    fc = stores.prepare_forecast(forecast)
    tr = stores.prepare_truth(truth)
    stores.check_same_grid(fc, tr, "forecast", "truth")
    lat = fc["latitude"].values
    n_lon = fc.sizes["longitude"]
    wl = spectra.band_wavelength_km(lat, n_lon, band)
    hours = fc["prediction_timedelta"].values / np.timedelta64(1, "h")
    lead_idx = [int(j) for j in np.flatnonzero(hours > 0)] if lead_hours is None else [
        int(np.flatnonzero(np.isclose(hours, h))[0]) for h in lead_hours]
    m = fc.sizes.get("member", 1)
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts = np.zeros(len(lead_idx))
    times = tr["time"].values
    for i in tqdm(range(fc.sizes["time"]), desc="spectra", unit="init"):
        init = fc["time"].values[i]
        for a, j in enumerate(lead_idx):
            valid = init + fc["prediction_timedelta"].values[j]
            if valid not in times:
                continue
            counts[a] += 1
            for ch in channels:
                var, lev = _split(ch)
                fda, tda = fc[var], tr[var]
                if lev is not None:
                    fda, tda = fda.sel(level=lev), tda.sel(level=lev)
                x = stores.read(fda, ("member", "latitude", "longitude"), time=i, prediction_timedelta=j)
                x = x if "member" in fda.dims else x[None]
                y = stores.read(tda.sel(time=valid), ("latitude", "longitude"))
                s_members = spectra.band_mean(spectra.zonal_energy_spectrum(x, lat), lat, band=band)  # (M, K)
                s_mean = spectra.band_mean(spectra.zonal_energy_spectrum(x.mean(0), lat), lat, band=band)
                s_truth = spectra.band_mean(spectra.zonal_energy_spectrum(y, lat), lat, band=band)
                block = np.concatenate([s_members, s_mean[None], s_truth[None]])
                sums[(ch, a)] = sums.get((ch, a), 0) + block
    if not counts.any():
        raise ValueError("no forecast valid time is in the truth store")
    sources = [f"member_{k}" for k in range(m)] + ["ensemble_mean", "truth"]
    rows = []
    for (ch, a), block in sums.items():
        block = block / counts[a]
        for s, spec in zip(sources, block, strict=True):
            for k in range(1, spec.size):
                rows.append((ch, float(hours[lead_idx[a]]), s, k, float(wl[k]), float(spec[k])))
    return pd.DataFrame(rows, columns=["channel", "lead_hours", "source", "k", "wavelength_km", "energy"])


def _split(ch: str) -> tuple[str, int | None]:
    from mosaic_jax.variables import split_channel

    return split_channel(ch)


def small_scale_table(df: pd.DataFrame) -> pd.DataFrame:
    """Energy at k > n_lon/4, relative to the truth's, per (channel, lead, source)."""
    k_max = int(df["k"].max())
    small = df[df["k"] > k_max / 2].groupby(["channel", "lead_hours", "source"])["energy"].sum().unstack("source")
    ratio = small.div(small["truth"], axis=0).drop(columns="truth")
    members = ratio[[c for c in ratio.columns if c.startswith("member_")]]
    return pd.DataFrame({"worst_member": members.min(axis=1), "best_member": members.max(axis=1),
                         "median_member": members.median(axis=1), "ensemble_mean": ratio["ensemble_mean"]})


def plot(df: pd.DataFrame, table: pd.DataFrame, path: Path, title: str) -> Path:
    chans = list(dict.fromkeys(df["channel"]))
    fig = Figure(figsize=(11, 3.0 * len(chans)), layout="constrained")
    axes = fig.subplots(len(chans), 2, squeeze=False)
    last = df["lead_hours"].max()
    for r, ch in enumerate(chans):
        d = df[(df["channel"] == ch) & (df["lead_hours"] == last)]
        ax = axes[r, 0]
        for s, g in d.groupby("source"):
            if s.startswith("member_"):
                ax.loglog(g["wavelength_km"], g["energy"], color="tab:blue", lw=0.7, alpha=0.6)
        ax.loglog([], [], color="tab:blue", lw=0.7, label="each member")
        g = d[d["source"] == "ensemble_mean"]
        ax.loglog(g["wavelength_km"], g["energy"], color="tab:orange", ls="--", label="ensemble mean")
        g = d[d["source"] == "truth"]
        ax.loglog(g["wavelength_km"], g["energy"], color="k", lw=2, label="truth")
        ax.invert_xaxis()
        ax.set_title(f"{headline_label(ch) or ch}: band-mean spectrum at +{last:g} h", fontsize=9)
        ax.set_xlabel("wavelength (km)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax = axes[r, 1]
        t = table.loc[ch]
        ax.fill_between(t.index, t["worst_member"], t["best_member"], color="tab:blue", alpha=0.3,
                        label="members (min..max)")
        ax.plot(t.index, t["median_member"], "o-", color="tab:blue", ms=3, label="median member")
        ax.plot(t.index, t["ensemble_mean"], "s--", color="tab:orange", ms=3, label="ensemble mean")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title("small-scale energy (k > n_lon/4) / truth", fontsize=9)
        ax.set_xlabel("lead time (h)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=80))


def toy_ensemble(truth: xr.Dataset, inits: np.ndarray, lead_hours: list[int], members: int,
                 variables: list[str], levels: list[int], seed: int = 0) -> xr.Dataset:
    """A stand-in ensemble with known spectral behaviour, for exercising the pipeline.

    Per latitude row, in zonal Fourier space: member = climatology + c_k U + sqrt(1 - c_k^2) U_m,
    with U the truth anomaly at the valid time, U_m the anomaly of a random other truth time
    (an analog, so it has the truth's spectrum) and c_k = exp(-(lead / 96 h) (k / 4)): small
    scales decorrelate first. Members keep the truth's energy at every scale; their mean loses
    it at small scales. Not a model: a reference for what the plots should look like.
    """
    rng = np.random.default_rng(seed)
    tr = stores.prepare_truth(truth)
    times = tr["time"].values
    hours = pd.DatetimeIndex(times).hour
    leads = np.array(lead_hours, dtype="timedelta64[h]").astype("timedelta64[ns]")
    out = {}
    for v in variables:
        da = tr[v]
        if "level" in da.dims:
            da = da.sel(level=levels)
        da = da.transpose("time", ..., "latitude", "longitude")
        vals = da.values.astype(np.float64)
        clim = {h: vals[hours == h].mean(0) for h in np.unique(hours)}
        k = np.arange(vals.shape[-1] // 2 + 1)
        arrs = []
        for i in inits:
            per_lead = []
            for lh, lt in zip(lead_hours, leads, strict=True):
                t = int(np.flatnonzero(times == i + lt)[0])
                c = clim[hours[t]]
                u = np.fft.rfft(vals[t] - c, axis=-1)
                corr = np.exp(-(lh / 96.0) * (k / 4.0))
                ms = []
                for _ in range(members):
                    a = int(rng.choice(np.flatnonzero(hours == hours[t])))
                    um = np.fft.rfft(vals[a] - clim[hours[a]], axis=-1)
                    ms.append(c + np.fft.irfft(corr * u + np.sqrt(1 - corr**2) * um, n=vals.shape[-1], axis=-1))
                per_lead.append(np.stack(ms))
            arrs.append(np.stack(per_lead, 1))
        dims = ("time", "member", "prediction_timedelta") + da.dims[1:]
        out[v] = (dims, np.stack(arrs).astype(np.float32))
    coords = {"time": inits, "member": np.arange(members), "prediction_timedelta": leads,
              "latitude": tr["latitude"].values, "longitude": tr["longitude"].values, "level": levels}
    return xr.Dataset(out, coords=coords)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--forecast", help="forecast store (WB2 forecast layout)")
    p.add_argument("--truth", help="truth store (WB2 layout)")
    p.add_argument("--demo", action="store_true", help="demo store + toy ensemble (no forecast needed)")
    p.add_argument("--name", default=None, help="output name (default: forecast store name, or 'toy-ensemble')")
    p.add_argument("--channels", nargs="+", default=None, help="channels (default: headline channels present)")
    p.add_argument("--band", nargs=2, type=float, default=spectra.DEFAULT_BAND)
    p.add_argument("--lead-hours", nargs="+", type=float, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    tmp = None
    if args.demo:
        from mosaic_jax.data import make_demo_data

        tmp = tempfile.TemporaryDirectory()
        truth_path = make_demo_data(Path(tmp.name) / "demo.zarr", start="2020-01-01", end="2020-01-31T18:00")
        truth = stores.open_store(truth_path)
        inits = truth["time"].values[:40:4]
        forecast = toy_ensemble(truth, inits, [24, 72, 120, 240], members=8,
                                variables=["geopotential", "temperature", "2m_temperature", "10m_u_component_of_wind",
                                           "specific_humidity"], levels=[500, 700, 850])
        name = args.name or "toy-ensemble"
    else:
        if not (args.forecast and args.truth):
            p.error("--forecast and --truth are required (or --demo)")
        forecast, truth = stores.open_store(args.forecast), stores.open_store(args.truth)
        name = args.name or Path(str(args.forecast).rstrip("/")).stem
    present = [channel_name(v, lv) for v in forecast.data_vars
               for lv in (forecast["level"].values if "level" in forecast[v].dims else [None])]
    channels = args.channels or [c for c in HEADLINE.values() if c in present]
    if not channels:
        raise SystemExit("no headline channel in the forecast; pass --channels")
    df = member_spectra(forecast, truth, channels, tuple(args.band), args.lead_hours)
    table = small_scale_table(df)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"spectra_{name}"
    atomic_write(stem.with_suffix(".csv"), lambda q: df.to_csv(q, index=False, float_format="%.6g"))
    md = [f"# Member energy spectra: {name}", "",
          f"Band {args.band[0]:g} <= |lat| <= {args.band[1]:g}; energy at zonal wavenumbers k > n_lon/4 relative "
          "to the truth (1 = all small-scale energy kept).", ""]
    if args.demo:
        md += ["Toy ensemble on the synthetic demo store (experiments/spectra.py:toy_ensemble), not the model.", ""]
    md.append(table.round(3).to_markdown() if _has_tabulate() else "```\n" + table.round(3).to_string() + "\n```")
    atomic_write(stem.with_suffix(".md"), lambda q: q.write_text("\n".join(md) + "\n"))
    png = plot(df, table, stem.with_suffix(".png"), f"{name}: every member vs truth ({args.band[0]:g}-"
               f"{args.band[1]:g} deg band)")
    print(table.round(3).to_string())
    print(f"wrote {stem}.csv, .md, .png" if png else "")
    if tmp is not None:
        tmp.cleanup()
    return 0


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None


if __name__ == "__main__":
    sys.exit(main())
