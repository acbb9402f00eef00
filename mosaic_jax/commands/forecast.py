"""``mosaic-jax forecast``: an ensemble forecast from a WeatherBench2 store."""

from __future__ import annotations

import argparse
from pathlib import Path

from mosaic_jax.config import ATTENTION_IMPLS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forecast", help="run an ensemble forecast and write .npz, .zarr or .nc")
    p.add_argument("--variant", choices=["era5", "hres"],
                   help="published variant (step, history, neighbours); needed for .pt checkpoints")
    p.add_argument("--checkpoint", help="mosaic-jax model directory, or a published .pt (converted on the fly)")
    p.add_argument("--random-weights", action="store_true", help="no checkpoint: random init (timing only)")
    p.add_argument("--zarr", required=True, help="WeatherBench2 store (local path or gs:// URL)")
    p.add_argument("--stats", help="normalization stats .npz (default: stats.npz in or beside the checkpoint directory)")
    p.add_argument("--init-time", required=True, nargs="+",
                   help="initial time(s), e.g. 2020-06-01T00 (several: .zarr/.nc output, on its time dim)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--members", type=int, default=24)
    p.add_argument("--member-chunk", type=int, help="members per device pass (bounds memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (default: bf16 on GPU)")
    p.add_argument("--attention-impl", default="auto", choices=ATTENTION_IMPLS)
    p.add_argument("--output", required=True, help="output path ending in .npz, .zarr or .nc")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def default_stats_path(checkpoint: str | None) -> Path | None:
    """Stats beside a model: ``MODEL/stats.npz``, or the training workdir's ``stats.npz``."""
    if not checkpoint:
        return None
    for candidate in (Path(checkpoint) / "stats.npz", Path(checkpoint).parent / "stats.npz"):
        if candidate.exists():
            return candidate
    return None


def load_for_forecast(checkpoint: str | None, variant: str | None, random_weights: bool, seed: int = 0):
    """(config, params) from a model directory, a published .pt, or a random init."""
    import jax

    from mosaic_jax.checkpoint import load_model
    from mosaic_jax.config import variant_config
    from mosaic_jax.convert import read_state_dict, state_dict_to_params
    from mosaic_jax.model import init_params

    if checkpoint and Path(checkpoint, "config.json").exists():
        cfg, params = load_model(checkpoint)
        if variant and (cfg.step_hours, cfg.num_history_steps) != (
                variant_config(variant).step_hours, variant_config(variant).num_history_steps):
            raise ValueError(f"checkpoint {checkpoint} is not a {variant} model (step {cfg.step_hours} h, "
                             f"history {cfg.num_history_steps})")
        return cfg, params
    if checkpoint:
        if not variant:
            raise ValueError("--variant is required to convert a published checkpoint")
        cfg = variant_config(variant)
        return cfg, state_dict_to_params(read_state_dict(checkpoint), cfg)
    if random_weights:
        if not variant:
            raise ValueError("--variant is required with --random-weights")
        cfg = variant_config(variant)
        return cfg, init_params(cfg, jax.random.key(seed))
    raise ValueError("pass --checkpoint (or --random-weights for timing)")


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from mosaic_jax.attention import require_kernel_device
    from mosaic_jax.data import NormStats, WeatherStore
    from mosaic_jax.forecast import run_forecast

    require_kernel_device(args.attention_impl)
    cfg, params = load_for_forecast(args.checkpoint, args.variant, args.random_weights, args.seed)
    stats_path = args.stats or default_stats_path(args.checkpoint)
    if stats_path is None or not Path(stats_path).exists():
        raise FileNotFoundError(f"normalization statistics not found ({stats_path}); pass --stats "
                                "(e.g. the release's norm_stats_era5.npz, or one written by 'mosaic-jax stats')")
    dtype = args.dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32")
    store = WeatherStore(args.zarr, channels=cfg.channels, static_variables=cfg.static_variables,
                         grid=(cfg.n_lon, cfg.n_lat))
    summary = run_forecast(cfg, params, store, NormStats.load(stats_path), init_time=args.init_time,
                           num_steps=args.steps, num_members=args.members, output=args.output, seed=args.seed,
                           member_chunk=args.member_chunk, dtype=jnp.dtype(dtype),
                           attention_impl=args.attention_impl, progress=not args.no_progress)
    print(summary.line())
    return 0
