"""The training objective: the almost-fair ensemble CRPS with latitude and channel weights.

Almost-fair CRPS (Lang et al. 2024, "AIFS-CRPS", eq. 3), for members ``x_1..x_M`` and truth ``y``::

    afCRPS_a = 1 / (2 M (M-1)) * sum_j sum_{k != j} ( |x_j - y| + |x_k - y| - (1 - eps) |x_j - x_k| ),
    eps = (1 - a) / M

which simplifies to ``mean_j |x_j - y| - (1 - eps) / (2 M (M-1)) * sum_{j,k} |x_j - x_k|``.
``a = 1`` is the fair (unbiased) CRPS, whose expectation is minimised by members drawn from the
truth's distribution for any M; ``a = 0`` is the plain ensemble CRPS, which rewards
under-dispersion for small M. The fair CRPS alone lets two members collapse onto each other
without penalty where they happen to agree; the small ``1 - a`` share of the plain CRPS removes
that degeneracy (AIFS-CRPS takes a = 0.95, our default). With one member the pair term is
absent and the score is the mean absolute error.

Weights (all on normalized variables): latitude rows by WeatherBench2 cell area (mean 1); a
channel by ``variable_weight * level_weight``, normalised to mean 1 over channels, where the level
weight is proportional to pressure (mean 1 over the variable's levels, as GraphCast and AIFS)
or uniform. The loss is the weighted mean over points and channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax import variables


def latitude_weights(lat_deg: Sequence[float]) -> np.ndarray:
    """WeatherBench2 cell-area weights of latitude rows, mean 1 (``sin`` of the cell bounds,
    which are midpoints between rows closed by the poles, so pole rows get their half cell)."""
    from mosaic_jax.evaluation.metrics import latitude_weights as wb2_weights

    return np.asarray(wb2_weights(np.asarray(lat_deg, np.float64)), np.float64)


def level_weights(levels: Sequence[float], weighting: str = "pressure") -> np.ndarray:
    """Per-level weights with mean 1: proportional to pressure, or uniform."""
    lv = np.asarray(levels, np.float64)
    if weighting == "uniform":
        return np.ones_like(lv)
    if weighting == "pressure":
        return lv / lv.mean()
    raise ValueError(f"level_weighting: expected 'pressure' or 'uniform', got {weighting!r}")


def channel_weights(channels: Sequence[str], *, variable_weights: Mapping[str, float] | Sequence = (),
                    level_weighting: str = "pressure") -> np.ndarray:
    """``(C,)`` weights, mean 1: ``variable_weight * level_weight`` per channel.

    ``variable_weights`` maps a variable name (``temperature``) or a channel name
    (``temperature_850``, which wins) to its weight; unlisted ones weigh 1.
    """
    vw = dict(variable_weights)
    names = [variables.split_channel(c) for c in channels]
    unknown = sorted(set(vw) - {v for v, _ in names} - set(channels))
    if unknown:
        raise ValueError(f"variable_weights: {unknown} match no channel of the model")
    levels_of: dict[str, list[int]] = {}
    for var, lvl in names:
        if lvl is not None:
            levels_of.setdefault(var, []).append(lvl)
    w = np.empty(len(channels), np.float64)
    for i, (name, (var, lvl)) in enumerate(zip(channels, names)):
        lw = 1.0
        if lvl is not None:
            lvls = levels_of[var]
            lw = float(level_weights(lvls, level_weighting)[lvls.index(lvl)])
        w[i] = vw.get(name, vw.get(var, 1.0)) * lw
    if w.sum() <= 0:
        raise ValueError("variable_weights: every channel weighs 0")
    return w / w.mean()


def loss_weights(latitudes: Sequence[float], channels: Sequence[str], *,
                 variable_weights: Mapping[str, float] | Sequence = (), level_weighting: str = "pressure",
                 channel_scale: Sequence[float] | None = None) -> np.ndarray:
    """``(lat, C)`` float32 weights broadcasting against ``(..., lon, lat, C)`` fields.

    ``channel_scale`` (C,) multiplies the channel weights before they are normalised to mean 1
    (``residual_channel_scale`` gives the one for residual-normalized losses).
    """
    lat_w = latitude_weights(latitudes)
    ch_w = channel_weights(channels, variable_weights=variable_weights, level_weighting=level_weighting)
    if channel_scale is not None:
        scale = np.asarray(channel_scale, np.float64)
        if scale.shape != ch_w.shape or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"channel_scale: expected {ch_w.shape[0]} positive finite values, got shape {scale.shape}")
        ch_w = ch_w * scale
        ch_w = ch_w / ch_w.mean()
    return (lat_w[:, None] * ch_w[None, :]).astype(np.float32)


def residual_channel_scale(stats: Any) -> np.ndarray:
    """``state_std / residual_std`` per channel: CRPS in state-normalized units times this is the
    CRPS in units of each channel's one-step change (CRPS scales with its argument)."""
    if stats is None or stats.residual_std is None:
        raise ValueError("loss_normalization='residual' and residual models need normalization statistics with "
                         "residual_mean and residual_std (mosaic-jax stats computes them; the published hres file "
                         "has none)")
    return np.asarray(stats.state_std, np.float64) / np.asarray(stats.residual_std, np.float64)


def crps_pointwise(pred: jax.Array, target: jax.Array, *, alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Almost-fair CRPS at every point: ``(crps, skill, spread)`` each shaped like ``target``.

    pred ``(M, ...)``, target ``(...)``. ``skill = mean_j |x_j - y|``; ``spread`` is the pair term
    ``sum_{j,k} |x_j - x_k| / (2 M (M-1))`` (0 for one member); ``crps = skill - (1 - eps) spread``.
    Computed in float32 over the M(M-1)/2 pairs (M is small).
    """
    x = pred.astype(jnp.float32)
    y = target.astype(jnp.float32)
    m = x.shape[0]
    skill = jnp.mean(jnp.abs(x - y[None]), axis=0)
    if m == 1:
        zero = jnp.zeros_like(skill)
        return skill, skill, zero
    pair_sum = sum(jnp.abs(x[j] - x[k]) for j in range(m) for k in range(j + 1, m))  # over j < k
    spread = pair_sum / (m * (m - 1))  # = sum over ordered pairs / (2 M (M-1))
    eps = (1.0 - alpha) / m
    return skill - (1.0 - eps) * spread, skill, spread


def crps_loss(pred: jax.Array, target: jax.Array, *, alpha: float = 0.95, weights: Any = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted almost-fair CRPS of an ensemble.

    Args:
      pred: ``(M, ..., lon, lat, C)`` members.
      target: ``(..., lon, lat, C)`` truth.
      alpha: the almost-fair alpha (module docstring).
      weights: broadcastable to ``target`` (typically ``loss_weights``'s ``(lat, C)``); None: uniform.
    Returns:
      ``(loss, diagnostics)``: the weighted mean CRPS (scalar) and ``skill``, ``spread`` (weighted
      means of the two terms) and ``crps_per_channel`` ``(C,)`` (latitude-weighted when ``weights``
      is given, without the channel weights).
    """
    if pred.shape[1:] != target.shape:
        raise ValueError(f"pred {pred.shape} must be (members, *target.shape) with target {target.shape}")
    crps, skill, spread = crps_pointwise(pred, target, alpha=alpha)
    w = jnp.ones((), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    wb = jnp.broadcast_to(w, crps.shape)
    norm = jnp.sum(wb)

    def wmean(a: jax.Array) -> jax.Array:
        return jnp.sum(a * wb) / norm

    # per channel: the latitude part of the weights only (channel weights divide out)
    wc = jnp.sum(wb.reshape(-1, crps.shape[-1]), axis=0)
    per_channel = jnp.sum((crps * wb).reshape(-1, crps.shape[-1]), axis=0) / wc
    diagnostics = {"skill": wmean(skill), "spread": wmean(spread), "crps_per_channel": per_channel}
    return wmean(crps), diagnostics


def ensemble_mean_mse_per_channel(pred: jax.Array, target: jax.Array, lat_weights: Any) -> jax.Array:
    """``(C,)`` latitude-weighted MSE of the ensemble mean; pred ``(M, ..., lon, lat, C)``."""
    err = jnp.square(jnp.mean(pred.astype(jnp.float32), axis=0) - target.astype(jnp.float32))
    w = jnp.broadcast_to(jnp.asarray(lat_weights, jnp.float32)[:, None], err.shape[-2:])
    w = jnp.broadcast_to(w, err.shape)
    return jnp.sum((err * w).reshape(-1, err.shape[-1]), axis=0) / jnp.sum(w.reshape(-1, err.shape[-1]), axis=0)
