"""Model-level properties of the optional residual head (not part of the published model)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax.config import get_config
from mosaic_jax.model import Mosaic, init_params


def _inputs(cfg, batch: int = 2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cfg.num_history_steps, cfg.n_lon, cfg.n_lat, cfg.num_channels)).astype(np.float32)
    day_year = rng.uniform(size=(batch, 2)).astype(np.float32)
    eps = rng.standard_normal((batch, cfg.noise_dim)).astype(np.float32)
    static = rng.standard_normal((cfg.n_lon, cfg.n_lat, cfg.num_static)).astype(np.float32)
    return tuple(map(jnp.asarray, (x, day_year, eps, static)))


def test_residual_head_adds_the_latest_state_to_the_direct_output():
    direct = get_config("tiny")
    residual = dataclasses.replace(direct, residual=True)
    params = init_params(direct, jax.random.key(0))
    x, day_year, eps, static = _inputs(direct)
    y_direct = Mosaic(direct, attention_impl="xla").apply({"params": params}, x, day_year, eps, static)
    y_residual = Mosaic(residual, attention_impl="xla").apply({"params": params}, x, day_year, eps, static)
    np.testing.assert_allclose(np.asarray(y_residual - x[:, -1]), np.asarray(y_direct), rtol=1e-5, atol=1e-5)


def test_untrained_residual_model_starts_near_persistence():
    """The residual head starts at N(0, 0.01), so the first forecasts are persistence plus a
    small perturbation; the direct head's are O(1) away from it."""
    residual = dataclasses.replace(get_config("tiny"), residual=True)
    x, day_year, eps, static = _inputs(residual)
    for cfg, bound in ((residual, 0.2), (get_config("tiny"), None)):
        params = init_params(cfg, jax.random.key(1))
        y = Mosaic(cfg, attention_impl="xla").apply({"params": params}, x, day_year, eps, static)
        rms = float(jnp.sqrt(jnp.mean(jnp.square(y - x[:, -1]))))
        if bound is not None:
            assert rms < bound
        else:
            assert rms > 0.5


def test_residual_scale_multiplies_each_channel_of_the_head():
    residual = dataclasses.replace(get_config("tiny"), residual=True)
    scale = np.linspace(0.01, 2.0, residual.num_channels)
    scaled = dataclasses.replace(residual, residual_scale=tuple(scale))
    params = init_params(residual, jax.random.key(2))
    x, day_year, eps, static = _inputs(residual)
    head = Mosaic(residual, attention_impl="xla").apply({"params": params}, x, day_year, eps, static) - x[:, -1]
    y = Mosaic(scaled, attention_impl="xla").apply({"params": params}, x, day_year, eps, static)
    np.testing.assert_allclose(np.asarray(y - x[:, -1]), np.asarray(head) * scale, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    (dict(residual=True, residual_scale=(1.0,)), "one factor per channel"),
    (dict(residual=True, residual_scale_fill=-1.0), "positive and finite"),
    (dict(residual=False, residual_scale_fill=1.0), "only applies with residual=True"),
])
def test_residual_scale_is_validated(changes, message):
    base = get_config("tiny")
    fill = changes.pop("residual_scale_fill", None)
    if fill is not None:
        changes["residual_scale"] = (fill,) * base.num_channels
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(base, **changes)


def test_local_time_features_follow_the_sun():
    """Local solar time: at 12 UTC the Greenwich column reads noon (angle pi); a point k
    columns east at d - k/n_lon reads what the point at d reads; and the published layout
    (without the option) is the same features minus the last two columns."""
    base = get_config("tiny")
    cfg = dataclasses.replace(base, local_time_features=True)
    x, _, _, static = _inputs(cfg, batch=1)
    def feats(c, d):
        return np.asarray(Mosaic(c, attention_impl="xla").apply(
            {}, x, jnp.asarray([[d, 0.3]], jnp.float32), static, method=Mosaic.input_features))[0]

    noon = feats(cfg, 0.5).reshape(cfg.n_lon, cfg.n_lat, -1)
    assert noon.shape[-1] == cfg.feature_dim == base.feature_dim + 2
    np.testing.assert_allclose(noon[0, :, -2:], np.tile([0.0, -1.0], (cfg.n_lat, 1)), atol=1e-6)
    k = 5
    east = feats(cfg, 0.5 - k / cfg.n_lon).reshape(cfg.n_lon, cfg.n_lat, -1)
    np.testing.assert_allclose(east[k, :, -2:], noon[0, :, -2:], atol=1e-5)
    np.testing.assert_array_equal(feats(base, 0.5), noon.reshape(-1, cfg.feature_dim)[:, :-2])
