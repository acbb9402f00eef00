"""``mosaic-jax convert``: a published checkpoint (or fixture) -> a mosaic-jax model directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a published .pt checkpoint or a fixture .npz to Orbax")
    p.add_argument("source", help="published-style .pt/.pth checkpoint, or fixture .npz")
    p.add_argument("--out", required=True, help="output model directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--variant", choices=["era5", "hres"], help="published variant the checkpoint belongs to")
    g.add_argument("--config", help="preset name or JSON config file")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def resolve_config(source: Path, variant: str | None, config: str | None, state_dict: dict):
    """The config to build: explicit, the fixture's own, or the variant the weights' shapes imply."""
    import numpy as np

    from mosaic_jax.config import ModelConfig, get_config, variant_config

    if config:
        return get_config(config)
    if variant:
        return variant_config(variant)
    if source.suffix == ".npz":
        with np.load(source, allow_pickle=False) as npz:
            if "model_config" in npz.files:
                return ModelConfig.from_json(str(npz["model_config"]))
    weight = next((v for k, v in state_dict.items() if k.endswith("preprocess.0.weight")), None)
    if weight is not None:
        for name in ("era5", "hres"):
            cfg = variant_config(name)
            if tuple(weight.shape) == (cfg.stages[0].dim, cfg.feature_dim):
                return cfg
    raise ValueError("cannot tell which model this checkpoint is for: pass --variant or --config")


def run(args: argparse.Namespace) -> int:
    from mosaic_jax.checkpoint import save_model
    from mosaic_jax.config import count_from_shapes
    from mosaic_jax.convert import read_state_dict, state_dict_to_params

    source = Path(args.source)
    state_dict = read_state_dict(source)
    cfg = resolve_config(source, args.variant, args.config, state_dict)
    params = state_dict_to_params(state_dict, cfg)
    out = save_model(args.out, params, cfg, metadata={"converted_from": str(source)}, overwrite=args.overwrite)
    print(f"wrote {out} ({count_from_shapes(params):,} parameters)")
    return 0
