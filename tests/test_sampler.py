"""The ensemble sampler against a step-by-step loop over the model, and its independence properties."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax.config import BottleneckConfig, StageConfig, get_config
from mosaic_jax.model import Mosaic, init_params
from mosaic_jax.sampler import EnsembleSampler, advance_progress, member_keys, sample, step_noise


@pytest.fixture(scope="module")
def micro():
    """A very small model (nside 4 -> 2 -> 1) on a 12 x 7 grid: fast on the CPU."""
    stage = StageConfig(nside=4, dim=16, num_heads=2, block_attn_size=48, sparse_block_size=12,
                        sparse_block_count=2, encoder_depth=1, decoder_depth=1, mlp_ratio=2.0, gqa_ratio=2)
    stage2 = dataclasses.replace(stage, nside=2, block_attn_size=12, sparse_block_size=4)
    bottleneck = BottleneckConfig(nside=1, dim=16, num_heads=2, block_attn_size=12, sparse_block_size=4,
                                  sparse_block_count=2, depth=1, mlp_ratio=2.0, gqa_ratio=2)
    cfg = dataclasses.replace(get_config("demo"), stages=(stage, stage2), bottleneck=bottleneck, n_lon=12, n_lat=7,
                              k_neighbors=4)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    history = rng.standard_normal((cfg.num_history_steps, 12, 7, cfg.num_channels)).astype(np.float32)
    static = rng.standard_normal((12, 7, 3)).astype(np.float32)
    return cfg, params, history, static


def test_sampler_equals_python_loop(micro):
    cfg, params, history, static = micro
    key, steps, members = jax.random.key(1), 3, 2
    traj = sample(cfg, params, history, jnp.array([0.25, 0.5]), static, key, members, steps, attention_impl="xla")
    model = Mosaic(cfg, attention_impl="xla")
    for m in range(members):
        mkey = jax.random.fold_in(key, m)
        hist, dy = jnp.asarray(history), jnp.array([0.25, 0.5])
        for t in range(steps):
            eps = jax.random.normal(jax.random.fold_in(mkey, t), (cfg.noise_dim,))
            new = model.apply({"params": params}, hist[None], dy[None], eps[None], static)[0]
            np.testing.assert_allclose(traj[m, t], new, rtol=1e-4, atol=1e-4)
            hist = jnp.concatenate([hist[1:], new[None]])
            dy = jnp.mod(dy + jnp.array([cfg.step_hours / 24, cfg.step_hours / 6 / 365.25]), 1.0)


def test_members_are_independent_of_ensemble_size(micro):
    cfg, params, history, static = micro
    key, dy = jax.random.key(2), jnp.array([0.0, 0.1])
    four = sample(cfg, params, history, dy, static, key, 4, 2, attention_impl="xla")
    two = sample(cfg, params, history, dy, static, key, 2, 2, attention_impl="xla")
    np.testing.assert_allclose(four[:2], two, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(four[0] - four[1]).max()) > 1e-4  # members differ


def test_deterministic_for_a_key(micro):
    cfg, params, history, static = micro
    a = sample(cfg, params, history, jnp.zeros(2), static, jax.random.key(3), 2, 2, attention_impl="xla")
    b = sample(cfg, params, history, jnp.zeros(2), static, jax.random.key(3), 2, 2, attention_impl="xla")
    c = sample(cfg, params, history, jnp.zeros(2), static, jax.random.key(4), 2, 2, attention_impl="xla")
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-4


def test_progress_advances_per_spec():
    dy = advance_progress(jnp.array([0.75, 0.999]), step_hours=6)
    np.testing.assert_allclose(dy, [0.0, (0.999 + 1 / 365.25) % 1.0], atol=1e-6)
    np.testing.assert_allclose(advance_progress(jnp.array([0.5, 0.2]), step_hours=24), [0.5, 0.2 + 4 / 365.25],
                               atol=1e-6)


def test_noise_is_standard_normal_per_member_and_step():
    keys = member_keys(jax.random.key(0), jnp.arange(200))
    eps = jax.vmap(step_noise, in_axes=(0, None, None))(keys, jnp.int32(5), 32)
    assert abs(float(eps.mean())) < 0.05 and abs(float(eps.std()) - 1) < 0.05


def test_sampler_rejects_unslidable_history():
    with pytest.raises(ValueError, match="history_spacing_hours"):
        EnsembleSampler(dataclasses.replace(get_config("tiny"), history_spacing_hours=12))
