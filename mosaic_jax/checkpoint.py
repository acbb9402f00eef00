"""Model checkpoints: an Orbax parameter tree plus the config that built it.

A model directory holds ``config.json`` and ``params/`` (Orbax). It is written into a
temporary sibling and renamed into place, so a crash never leaves a half-written model.
Training checkpoints (optimizer state, data iterator) live in ``mosaic_jax.training``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mosaic_jax.atomic import atomic_path
from mosaic_jax.config import ModelConfig
from mosaic_jax.model import param_shapes

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_model(path: str | Path, params: Any, cfg: ModelConfig, *, metadata: dict[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    """Write ``params`` and ``cfg`` to the directory ``path`` atomically."""
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True or --overwrite)")
    with atomic_path(path) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, jax.tree_util.tree_map(np.asarray, params))
            ckptr.wait_until_finished()
        (tmp / CONFIG_FILE).write_text(json.dumps({"model_config": cfg.to_dict(), **(metadata or {})}, indent=1))
    return path


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: not a mosaic-jax model directory (no {CONFIG_FILE})")
    return ModelConfig.from_dict(json.loads(cfg_file.read_text())["model_config"])


def load_model(path: str | Path) -> tuple[ModelConfig, Any]:
    """``(config, params)`` from a directory written by ``save_model``, shapes checked."""
    path = Path(path).absolute()
    cfg = load_config(path)
    target = param_shapes(cfg)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / PARAMS_DIR, target)
    return cfg, params
