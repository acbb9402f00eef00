"""``mosaic-jax stats STORE --out norm_stats.npz``: per-channel normalization statistics."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="state and residual mean/std per channel (the published npz format)")
    p.add_argument("store", help="zarr store: local path or gs:// URL")
    p.add_argument("--out", required=True, help="output .npz (state_mean, state_std, residual_mean, residual_std)")
    p.add_argument("--start", default=None, help="first time (default: the store's first)")
    p.add_argument("--end", default=None, help="last time, inclusive (default: the store's last)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--step-hours", type=int, help="model step of the residuals in hours")
    g.add_argument("--variant", choices=["era5", "hres"], help="take the step of a published variant (24 / 6 h)")
    p.add_argument("--chunk-size", type=int, default=8, help="times read at once (bounds memory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mosaic_jax.data import WeatherStore, compute_stats

    if args.step_hours is None and args.variant is None:
        raise ValueError("give --step-hours or --variant")
    step = args.step_hours if args.step_hours is not None else {"era5": 24, "hres": 6}[args.variant]
    with WeatherStore(args.store) as store:
        print(f"{store}; residuals {step} h apart")
        stats = compute_stats(store, start=args.start, end=args.end, step_hours=step,
                              chunk_size=args.chunk_size, progress=True)
        stats.save(args.out)
        print(f"wrote {args.out}: state and residual mean/std of {stats.num_channels} channels")
    return 0
