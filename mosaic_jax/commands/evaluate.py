"""``mosaic-jax evaluate``: WeatherBench2-style scores, scorecard and plots of a forecast store."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score forecasts against a WeatherBench2 truth store (metrics, scorecard, plots)",
        description="Score a forecast store (ours, or any in WeatherBench2's forecast layout) against a "
                    "WeatherBench2 truth store. Writes metrics.nc, scorecard.md/.csv and PNG plots to --out.")
    p.add_argument("--forecast", required=True, help="forecast store (zarr directory or NetCDF file)")
    p.add_argument("--truth", required=True, help="truth store in WeatherBench2 layout (zarr or NetCDF)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--variables", nargs="+", default=None, metavar="VAR",
                   help="variables to score (WB2 names; default: all shared by forecast and truth)")
    p.add_argument("--levels", nargs="+", type=float, default=None, metavar="HPA",
                   help="pressure levels to score (default: all shared levels)")
    p.add_argument("--lead-hours", nargs="+", type=float, default=None, metavar="H",
                   help="lead times to score (default: every lead > 0 in the forecast)")
    p.add_argument("--climatology", default=None, metavar="PATH",
                   help="WeatherBench2 climatology store (dayofyear, hour); default: computed from the truth")
    p.add_argument("--climatology-period", nargs=2, default=None, metavar=("START", "END"),
                   help="period of the truth used for the computed climatology (default: all truth times)")
    p.add_argument("--climatology-window-days", type=int, default=61,
                   help="day-of-year smoothing window of the computed climatology (default 61, as WB2)")
    p.add_argument("--band", nargs=2, type=float, default=(30.0, 60.0), metavar=("LAT_MIN", "LAT_MAX"),
                   help="|latitude| band over which spectra are averaged for the spectral ratio (default 30 60)")
    p.add_argument("--name", default="mosaic", help="model name in outputs (default: mosaic)")
    p.add_argument("--no-ensemble-correction", action="store_true",
                   help="report the spread-skill ratio without the sqrt((M+1)/M) finite-ensemble correction")
    p.add_argument("--memory-gb", type=float, default=1.0, help="memory budget for one chunk of leads (GiB)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mosaic_jax.evaluation.evaluate import evaluate_forecasts

    out = evaluate_forecasts(
        args.forecast, args.truth, args.out,
        variables=args.variables, levels=args.levels, lead_hours=args.lead_hours,
        climatology=args.climatology,
        climatology_period=tuple(args.climatology_period) if args.climatology_period else None,
        climatology_window_days=args.climatology_window_days, band=tuple(args.band), model_name=args.name,
        finite_ensemble_correction=not args.no_ensemble_correction,
        memory_budget_bytes=int(args.memory_gb * 2**30), progress=not args.no_progress, plots=not args.no_plots)
    print(f"metrics:   {out['netcdf']}")
    print(f"scorecard: {out['scorecard_md']} ({out['scorecard_csv'].name})")
    for p in out["plots"]:
        print(f"plot:      {p}")
    return 0
