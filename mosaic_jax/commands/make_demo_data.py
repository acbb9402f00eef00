"""``mosaic-jax make-demo-data OUT.zarr``: the embedded synthetic dataset (WeatherBench2 layout)."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-demo-data", help="write a synthetic store in the WeatherBench2 layout (no download)")
    p.add_argument("out", help="output zarr store, e.g. demo.zarr")
    p.add_argument("--resolution", type=float, default=7.5,
                   help="grid step in degrees (7.5: 48x25, the demo presets; 1.5: 240x121, the paper's)")
    p.add_argument("--start", default="2020-01-01", help="first time (default %(default)s)")
    p.add_argument("--end", default="2020-12-31T18:00", help="last time, inclusive (default %(default)s)")
    p.add_argument("--freq-hours", type=int, default=6, help="time step in hours (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="comma-separated pressure levels in hPa (default: the 13 of SPEC.md)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mosaic_jax import variables
    from mosaic_jax.data import WeatherStore, make_demo_data

    t0 = time.perf_counter()
    out = make_demo_data(args.out, resolution_deg=args.resolution, start=args.start, end=args.end,
                         freq_hours=args.freq_hours, seed=args.seed,
                         levels=args.levels or variables.PRESSURE_LEVELS, overwrite=args.overwrite, progress=True)
    channels = variables.channel_names(levels=tuple(args.levels or variables.PRESSURE_LEVELS))
    with WeatherStore(out, channels=channels) as store:
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s: {store.longitude.size} lon x {store.latitude.size} "
              f"lat, {len(channels)} channels + {len(store.static_variables)} static, {store.time_range_str()}")
    return 0
