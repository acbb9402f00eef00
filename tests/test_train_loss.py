"""The training objective: almost-fair CRPS against a float64 numpy oracle, its known
properties, the weights, the config's validation, and the non-finite step guard."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax.training import TrainConfig, channel_weights, crps_loss, crps_pointwise, latitude_weights, loss_weights


def afcrps_reference(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Lang et al. (2024) eq. 3 written as its double sum, in float64."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m = x.shape[0]
    if m == 1:
        return np.abs(x[0] - y)
    eps = (1.0 - alpha) / m
    total = np.zeros_like(y)
    for j, k in itertools.permutations(range(m), 2):
        total += np.abs(x[j] - y) + np.abs(x[k] - y) - (1.0 - eps) * np.abs(x[j] - x[k])
    return total / (2.0 * m * (m - 1))


@pytest.mark.parametrize("members", [1, 2, 3, 5])
@pytest.mark.parametrize("alpha", [0.0, 0.95, 1.0])
def test_crps_matches_float64_reference(members: int, alpha: float) -> None:
    rng = np.random.default_rng(members)
    x = rng.standard_normal((members, 3, 4, 5, 6)).astype(np.float32)
    y = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    crps, _, _ = crps_pointwise(jnp.asarray(x), jnp.asarray(y), alpha=alpha)
    np.testing.assert_allclose(np.asarray(crps), afcrps_reference(x, y, alpha), rtol=2e-6, atol=2e-6)


def test_weighted_loss_is_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 5, 4)).astype(np.float32)
    y = rng.standard_normal((3, 8, 5, 4)).astype(np.float32)
    w = rng.uniform(0.1, 2.0, (5, 4)).astype(np.float32)
    loss, diag = crps_loss(jnp.asarray(x), jnp.asarray(y), alpha=0.95, weights=w)
    ref = afcrps_reference(x, y, 0.95)
    wb = np.broadcast_to(w, ref.shape)
    np.testing.assert_allclose(float(loss), (ref * wb).sum() / wb.sum(), rtol=1e-5)
    per_channel = (ref * wb).reshape(-1, 4).sum(0) / wb.reshape(-1, 4).sum(0)
    np.testing.assert_allclose(np.asarray(diag["crps_per_channel"]), per_channel, rtol=1e-5)


def test_one_member_is_mae() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 100)).astype(np.float32)
    y = rng.standard_normal(100).astype(np.float32)
    for alpha in (0.0, 0.5, 1.0):
        loss, diag = crps_loss(jnp.asarray(x), jnp.asarray(y), alpha=alpha)
        np.testing.assert_allclose(float(loss), np.abs(x[0] - y).mean(), rtol=1e-6)
        assert float(diag["spread"]) == 0.0


def test_fair_crps_is_minimised_by_the_truth_distribution() -> None:
    """Truth ~ N(0, 1); members ~ N(0, s^2). In expectation the fair CRPS (alpha=1) is smallest
    at s = 1 for any M and equals the CRPS of N(0, 1) against itself, 1/sqrt(pi). The plain
    ensemble CRPS (alpha=0) with 2 members prefers an under-dispersed ensemble."""
    rng = np.random.default_rng(2)
    n, m = 400_000, 2
    y = rng.standard_normal(n)
    z = rng.standard_normal((m, n))
    scales = np.array([0.6, 0.8, 1.0, 1.2, 1.4])

    def expected(alpha: float) -> np.ndarray:
        return np.array([float(jnp.mean(crps_pointwise(jnp.asarray(s * z, jnp.float32), jnp.asarray(y, jnp.float32),
                                                       alpha=alpha)[0])) for s in scales])

    fair = expected(1.0)
    assert scales[np.argmin(fair)] == 1.0
    assert abs(fair[2] - 1.0 / np.sqrt(np.pi)) < 5e-3
    plain = expected(0.0)
    assert scales[np.argmin(plain)] < 1.0
    almost = expected(0.95)
    assert scales[np.argmin(almost)] == 1.0


def test_latitude_weights_are_wb2_cell_areas() -> None:
    lat = np.linspace(-90, 90, 9)
    w = latitude_weights(lat)
    bounds = np.deg2rad(np.concatenate([[-90], (lat[:-1] + lat[1:]) / 2, [90]]))
    area = np.diff(np.sin(bounds))
    np.testing.assert_allclose(w, area / area.mean())
    assert w[0] > 0 and abs(w.mean() - 1) < 1e-12


def test_channel_weights() -> None:
    channels = ("2m_temperature", "mean_sea_level_pressure", "temperature_500", "temperature_850", "geopotential_500")
    w = channel_weights(channels, level_weighting="uniform")
    np.testing.assert_allclose(w, 1.0)
    w = channel_weights(channels, variable_weights={"mean_sea_level_pressure": 0.1, "temperature_850": 2.0})
    # pressure weighting: temperature levels 500 and 850 get 500/675 and 850/675; geopotential alone gets 1
    raw = np.array([1.0, 0.1, 500 / 675, 2.0 * 850 / 675, 1.0])
    np.testing.assert_allclose(w, raw / raw.mean())
    with pytest.raises(ValueError, match="match no channel"):
        channel_weights(channels, variable_weights={"nope": 1.0})
    assert loss_weights(np.linspace(-90, 90, 9), channels).shape == (9, 5)


def test_train_config_validates_and_round_trips() -> None:
    tc = TrainConfig(variable_weights={"temperature": 2.0}, batch_size=4)
    assert TrainConfig.from_json(tc.to_json()) == tc
    with pytest.raises(ValueError, match="crps_alpha"):
        TrainConfig(crps_alpha=1.5)
    with pytest.raises(ValueError, match="mesh_ensemble"):
        TrainConfig(ensemble_members=3, mesh_ensemble=2)
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"learning_rat": 1.0})


def test_nonfinite_step_is_skipped() -> None:
    """A NaN batch leaves parameters and optimizer state bit for bit, counts, and the next
    finite step resets the streak."""
    from mosaic_jax.training.testing import micro_config, micro_train_config
    from mosaic_jax.training.train_step import build_step_fns, init_state

    cfg, tc = micro_config(), micro_train_config(batch_size=1)
    fns = build_step_fns(cfg, tc, None)
    state = init_state(cfg, tc, fns.tx, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    grid = (cfg.n_lon, cfg.n_lat, cfg.num_channels)
    good = {"history": rng.standard_normal((1, 2, *grid)).astype(np.float32),
            "targets": rng.standard_normal((1, 1, *grid)).astype(np.float32),
            "day_year": np.array([[0.25, 0.5]], np.float32)}
    bad = dict(good, history=np.where(rng.uniform(size=good["history"].shape) < 0.01, np.nan, good["history"]))
    static = rng.standard_normal((cfg.n_lon, cfg.n_lat, cfg.num_static)).astype(np.float32)
    step = jax.jit(fns.train_step)

    after_bad, m = step(state, bad, static)
    assert not bool(m["finite"]) and int(m["consecutive_nonfinite"]) == 1 and int(m["total_nonfinite"]) == 1
    assert int(after_bad["step"]) == 1
    for a, b in zip(jax.tree_util.tree_leaves((state["params"], state["opt_state"])),
                    jax.tree_util.tree_leaves((after_bad["params"], after_bad["opt_state"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    after_bad2, m = step(after_bad, bad, static)
    assert int(m["consecutive_nonfinite"]) == 2
    after_good, m = step(after_bad2, good, static)
    assert bool(m["finite"]) and int(m["consecutive_nonfinite"]) == 0 and int(m["total_nonfinite"]) == 2
    assert float(m["learning_rate"]) == pytest.approx(0.0)  # first applied update: warmup starts at 0
    before, after = (jax.tree_util.tree_leaves(s["opt_state"]) for s in (after_bad2, after_good))
    changed = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(before, after)]
    assert any(changed)


def test_residual_loss_normalization_is_crps_of_the_change_in_its_own_units() -> None:
    """With ``channel_scale = state_std / residual_std`` and uniform channel weights, the weighted
    loss on state-normalized fields equals (up to the mean-1 normalisation of the weights) the
    plain CRPS of fields normalized by the one-step change's std: CRPS scales with its argument."""
    from mosaic_jax.data import NormStats
    from mosaic_jax.training.loss import residual_channel_scale

    rng = np.random.default_rng(7)
    state_std = rng.uniform(1.0, 50.0, 4)
    residual_std = state_std * rng.uniform(0.02, 1.0, 4)
    stats = NormStats(np.zeros(4), state_std, np.zeros(4), residual_std)
    lat = np.linspace(-90, 90, 5)
    channels = ["2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind", "mean_sea_level_pressure"]
    scale = residual_channel_scale(stats)
    w = loss_weights(lat, channels, channel_scale=scale)
    phys_x = rng.standard_normal((3, 6, 5, 4)) * residual_std
    phys_y = rng.standard_normal((6, 5, 4)) * residual_std
    loss, _ = crps_loss(jnp.asarray(phys_x / state_std, jnp.float32), jnp.asarray(phys_y / state_std, jnp.float32),
                        alpha=0.95, weights=w)
    ref = afcrps_reference(phys_x / residual_std, phys_y / residual_std, 0.95) * latitude_weights(lat)[None, :, None]
    np.testing.assert_allclose(float(loss) * np.mean(scale), ref.mean(), rtol=1e-5)


def test_residual_loss_normalization_needs_residual_statistics() -> None:
    from mosaic_jax.config import get_config
    from mosaic_jax.data import NormStats
    from mosaic_jax.training.train_step import build_step_fns

    cfg = get_config("tiny")
    tc = TrainConfig(loss_normalization="residual", total_steps=10, warmup_steps=0)
    state_only = NormStats(np.zeros(cfg.num_channels), np.ones(cfg.num_channels))
    with pytest.raises(ValueError, match="residual_std"):
        build_step_fns(cfg, tc, None, state_only)
    with pytest.raises(ValueError, match="loss_normalization"):
        TrainConfig(loss_normalization="physical")
