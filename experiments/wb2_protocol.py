"""The WeatherBench2 1.5 degree protocol: forecasts from every 00/12 UTC initial condition of
a test year out to 240 h, scored against the truth store with `mosaic-jax evaluate`'s code.

    python experiments/wb2_protocol.py --checkpoint models/era5 --stats norm_stats_era5.npz \
        --truth gs://weatherbench2/datasets/era5/1959-2023_01_10-6h-240x121_equiangular_with_poles_conservative.zarr \
        --year 2020 --members 24 --out runs/wb2_2020

Forecasts are written one month per store (``forecasts/YYYY-MM.zarr``, resumable: a month
already written is skipped), then evaluated together; the scorecard and metrics land in
``OUT/evaluation`` and a summary is appended to experiments/results/wb2_protocol.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402


def init_times(year: int, hours: tuple[int, ...], max_inits: int | None) -> pd.DatetimeIndex:
    times = pd.date_range(f"{year}-01-01", f"{year}-12-31T23:00", freq="h")
    times = times[times.hour.isin(hours)]
    return times[:max_inits] if max_inits else times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="mosaic-jax model dir or published .pt (with --variant)")
    ap.add_argument("--variant", choices=["era5", "hres"])
    ap.add_argument("--stats", help="normalization stats (default: stats.npz in or beside the checkpoint dir)")
    ap.add_argument("--truth", required=True, help="WeatherBench2 truth store (local or gs://)")
    ap.add_argument("--climatology", help="WeatherBench2 climatology store (default: computed from the truth)")
    ap.add_argument("--year", type=int, default=2020)
    ap.add_argument("--hours", type=int, nargs="+", default=[0, 12])
    ap.add_argument("--lead-hours", type=int, default=240)
    ap.add_argument("--members", type=int, default=24)
    ap.add_argument("--member-chunk", type=int)
    ap.add_argument("--max-inits", type=int, help="only the first N init times (smoke tests)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from mosaic_jax.commands.forecast import default_stats_path, load_for_forecast
    from mosaic_jax.data import NormStats, WeatherStore
    from mosaic_jax.evaluation import evaluate_forecasts
    from mosaic_jax.forecast import run_forecast

    cfg, params = load_for_forecast(args.checkpoint, args.variant, False)
    stats_path = args.stats or default_stats_path(args.checkpoint)
    if stats_path is None:
        raise FileNotFoundError("normalization statistics not found beside the checkpoint: pass --stats")
    stats = NormStats.load(stats_path)
    if args.lead_hours % cfg.step_hours:
        raise ValueError(f"--lead-hours {args.lead_hours} is not a multiple of the model step {cfg.step_hours} h")
    steps = args.lead_hours // cfg.step_hours
    store = WeatherStore(args.truth, channels=cfg.channels, static_variables=cfg.static_variables,
                         grid=(cfg.n_lon, cfg.n_lat))
    dtype = jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
    out = Path(args.out)
    (out / "forecasts").mkdir(parents=True, exist_ok=True)
    inits = init_times(args.year, tuple(args.hours), args.max_inits)
    written, seconds = [], 0.0
    for month, group in inits.groupby(inits.month).items():
        path = out / "forecasts" / f"{args.year}-{month:02d}.zarr"
        if not path.exists():
            summary = run_forecast(cfg, params, store, stats, init_time=[t.to_datetime64() for t in group],
                                   num_steps=steps, num_members=args.members, output=path,
                                   member_chunk=args.member_chunk, dtype=dtype)
            print(summary.line())
            seconds += summary.wall_seconds
        written.append(path)

    import xarray as xr

    forecasts = xr.open_mfdataset([str(p) for p in written], engine="zarr", combine="nested", concat_dim="time")
    result = evaluate_forecasts(forecasts, args.truth, out / "evaluation", climatology=args.climatology)
    body = (f"{len(inits)} init times ({args.year}, {'/'.join(f'{h:02d}' for h in args.hours)} UTC), "
            f"{args.members} members, {steps} steps of {cfg.step_hours} h; forecast wall time this run "
            f"{seconds:.0f} s.\n\n" + Path(result["scorecard_md"]).read_text())
    print("recorded in", append_result("wb2_protocol", f"{args.checkpoint} on {args.truth}", body))


if __name__ == "__main__":
    main()
