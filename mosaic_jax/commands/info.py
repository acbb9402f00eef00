"""``mosaic-jax info``: a configuration's shape and parameter count (no allocation), and which
attention implementation ``auto`` picks on this machine's devices."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a config's levels and parameter count")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="paper-era5", help="preset name (paper-era5, paper-hres, tiny, demo)")
    g.add_argument("--config", help="a JSON config file (fixture model_config schema)")
    g.add_argument("--checkpoint", help="a mosaic-jax model directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flax import traverse_util

    from mosaic_jax.checkpoint import load_config
    from mosaic_jax.config import count_from_shapes, get_config
    from mosaic_jax.model import param_shapes

    if args.checkpoint:
        cfg, name = load_config(args.checkpoint), args.checkpoint
    else:
        name = args.config or args.preset
        cfg = get_config(name)
    shapes = param_shapes(cfg)
    print(f"config: {name}")
    print(f"grid: {cfg.n_lon} lon x {cfg.n_lat} lat, {cfg.num_channels} channels, {cfg.num_static} static fields, "
          f"history {cfg.num_history_steps} x {cfg.history_spacing_hours} h, step {cfg.step_hours} h, "
          f"k_neighbors {cfg.k_neighbors}")
    levels = [("stage %d" % (i + 1), s) for i, s in enumerate(cfg.stages)] + [("bottleneck", cfg.bottleneck)]
    for label, s in levels:
        print(f"  {label:10s} nside {s.nside:4d} tokens {s.num_pixels:6d} dim {s.dim:5d} heads {s.num_heads:3d} "
              f"(kv {s.num_kv_heads}) block {s.block_attn_size} sparse {s.sparse_block_size} top-k "
              f"{s.sparse_block_count}")
    by_module: dict[str, int] = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        top = path[0].rsplit("_", 1)[0] if path[0][-1].isdigit() else path[0]
        by_module[top] = by_module.get(top, 0) + count_from_shapes(leaf)
    for mod, n in by_module.items():
        print(f"    {mod:20s} {n:14,d}")
    print(f"parameters: {count_from_shapes(shapes)}")
    print(devices_line())
    return 0


def devices_line() -> str:
    """This process's devices and what ``--attention-impl auto`` runs on them, with the reason."""
    import jax

    from mosaic_jax.attention import kernel_device_problem

    dev = jax.devices()[0]
    line = f"devices: {jax.device_count()} x {dev.device_kind} ({dev.platform}); --attention-impl auto runs "
    problem = kernel_device_problem()
    return line + ("the Pallas kernels" if problem is None else f"the xla reference ({problem})")
