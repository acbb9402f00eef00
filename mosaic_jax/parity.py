"""Reproduce a fixture of the published model: the port's correctness check.

A fixture ``.npz`` holds a ``model_config`` (JSON), inputs (``x (B, 1|M, T, lon, lat, C)``,
``day_year_time (B, 1|M, 2)``, ``static``, ``longitude``, ``latitude``), per-member noise
``noise_eps (M, noise_dim)`` and the published outputs ``y (B, M, lon, lat, C)``, plus
``param/<torch name>`` weights (SPEC.md, "Fixtures").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from mosaic_jax.config import ModelConfig
from mosaic_jax.convert import load_fixture_params, read_state_dict, state_dict_to_params
from mosaic_jax.model import Mosaic

PARITY_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class ParityResult:
    max_abs_err: float
    rel_l2_err: float
    output: np.ndarray

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= PARITY_TOLERANCE


def _check_grid(cfg: ModelConfig, fixture: dict[str, np.ndarray]) -> None:
    for name, expected in (("longitude", cfg.longitudes), ("latitude", cfg.latitudes)):
        if name in fixture and not np.allclose(fixture[name], expected, atol=1e-4):
            raise ValueError(f"fixture {name} does not match the config's grid ({cfg.n_lon} x {cfg.n_lat}, "
                             f"south to north from 0 E)")


def run_parity(fixture_path: str | Path, checkpoint: str | Path | None = None,
               attention_impl: str = "xla") -> ParityResult:
    """Run the forward of the fixture's config in float32 and compare with its ``y``.

    Weights come from the fixture's ``param/`` entries, or from ``checkpoint`` (a
    published-style ``.pt``) when given.
    """
    with np.load(fixture_path, allow_pickle=False) as npz:
        fixture = {k: npz[k] for k in npz.files}
    for key in ("model_config", "x", "day_year_time", "static", "noise_eps", "y"):
        if key not in fixture:
            raise ValueError(f"{fixture_path}: missing fixture entry {key!r}")
    cfg = ModelConfig.from_json(str(fixture["model_config"]))
    _check_grid(cfg, fixture)
    state_dict = read_state_dict(checkpoint) if checkpoint else load_fixture_params(fixture)
    params = state_dict_to_params(state_dict, cfg)

    y_ref = fixture["y"].astype(np.float32)  # (B, M, lon, lat, C)
    b, m = y_ref.shape[:2]
    x = np.broadcast_to(fixture["x"], (b, m) + fixture["x"].shape[2:]).reshape((b * m,) + fixture["x"].shape[2:])
    day_year = np.broadcast_to(fixture["day_year_time"], (b, m, 2)).reshape(b * m, 2)
    eps = np.broadcast_to(fixture["noise_eps"], (b, m, cfg.noise_dim)).reshape(b * m, cfg.noise_dim)

    model = Mosaic(cfg, attention_impl=attention_impl)
    with jax.default_matmul_precision("float32"):
        y = jax.jit(lambda p, *a: model.apply({"params": p}, *a))(params, x, day_year, eps, fixture["static"])
        y = np.asarray(y).reshape(y_ref.shape)
    err = y - y_ref
    return ParityResult(max_abs_err=float(np.abs(err).max()),
                        rel_l2_err=float(np.linalg.norm(err) / np.linalg.norm(y_ref)), output=y)
