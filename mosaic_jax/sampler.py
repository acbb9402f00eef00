"""Ensemble sampling: a pure function of (params, initial history, keys) -> trajectories.

Member ``i``'s noise at step ``t`` is ``normal(fold_in(fold_in(key, i), t))`` — derived from
its own key and the step index only — so a member's trajectory never depends on how many
other members run beside it, how they are chunked, or on which device they sit.
The history window slides by one state per step; day/year progress advance per SPEC.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mosaic_jax.attention import BatchSharding
from mosaic_jax.config import ModelConfig
from mosaic_jax.flop_count import count_flops
from mosaic_jax.model import Mosaic, param_shapes

Array = jax.Array


def advance_progress(day_year: Array, step_hours: int) -> Array:
    """Day/year progress after one step: ``+stride/4`` and ``+stride/365.25`` (stride in 6 h units).

    This is the published release's rule (SPEC.md), kept for checkpoint fidelity.
    """
    stride = step_hours / 6.0
    return jnp.mod(day_year + jnp.asarray([stride / 4.0, stride / 365.25], day_year.dtype), 1.0)


def member_keys(key: Array, member_ids: Array) -> Array:
    """One key per member id; member i's key depends only on ``key`` and ``i``."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(member_ids)


def step_noise(member_key: Array, step: Array, noise_dim: int) -> Array:
    return jax.random.normal(jax.random.fold_in(member_key, step), (noise_dim,), jnp.float32)


@dataclasses.dataclass(frozen=True)
class EnsembleSampler:
    """Builds the per-step and whole-rollout functions for one model configuration.

    ``batch_sharding``: when members are split over a mesh inside a sharded jit, its mesh
    and axes (the Pallas attention then runs on each device's own members).
    """

    cfg: ModelConfig
    dtype: Any = jnp.float32
    attention_impl: str = "auto"
    batch_sharding: BatchSharding | None = None

    def __post_init__(self) -> None:
        if self.cfg.history_spacing_hours != self.cfg.step_hours:
            raise ValueError(f"history_spacing_hours={self.cfg.history_spacing_hours} must equal "
                             f"step_hours={self.cfg.step_hours} for a sliding-window rollout")

    @property
    def model(self) -> Mosaic:
        return Mosaic(self.cfg, dtype=self.dtype, attention_impl=self.attention_impl,
                      batch_sharding=self.batch_sharding)

    def step(self, params: Any, history: Array, day_year: Array, static: Array, keys: Array,
             step_index: Array) -> tuple[Array, Array, Array]:
        """One step for a batch of members.

        history (M, T, lon, lat, C) normalized, day_year (M, 2), keys (M,) member keys.
        Returns (next history, next day_year, the new state (M, lon, lat, C)).
        """
        eps = jax.vmap(step_noise, in_axes=(0, None, None))(keys, step_index, self.cfg.noise_dim)
        new = self.model.apply({"params": params}, history, day_year, eps, static)
        history = jnp.concatenate([history[:, 1:], new[:, None].astype(history.dtype)], axis=1)
        return history, advance_progress(day_year, self.cfg.step_hours), new

    def rollout(self, params: Any, history: Array, day_year: Array, static: Array, keys: Array,
                num_steps: int, first_step: int = 0) -> Array:
        """All steps at once with ``lax.scan``: (M, num_steps, lon, lat, C) normalized states."""

        def body(carry: tuple[Array, Array], t: Array) -> tuple[tuple[Array, Array], Array]:
            hist, dy = carry
            hist, dy, new = self.step(params, hist, dy, static, keys, t)
            return (hist, dy), new

        _, traj = jax.lax.scan(body, (history, day_year), first_step + jnp.arange(num_steps))
        return jnp.moveaxis(traj, 0, 1)


def sample(cfg: ModelConfig, params: Any, history: Array, day_year: Array, static: Array, key: Array,
           num_members: int, num_steps: int, **sampler_kwargs: Any) -> Array:
    """Convenience: ``num_members`` trajectories (M, steps, lon, lat, C) from one initial state.

    history (T, lon, lat, C) and day_year (2,) are shared by all members.
    """
    sampler = EnsembleSampler(cfg, **sampler_kwargs)
    keys = member_keys(key, jnp.arange(num_members))
    hist = jnp.broadcast_to(history, (num_members,) + history.shape)
    dy = jnp.broadcast_to(day_year, (num_members, 2))
    return jax.jit(sampler.rollout, static_argnums=(5,))(params, hist, dy, static, keys, num_steps)


def member_step_flops(cfg: ModelConfig) -> float:
    """Matrix FLOPs of one forecast step of one member, counted from the step's jaxpr
    (``mosaic_jax.flop_count``; attention on its pure-JAX path, which defines the FLOPs the
    Pallas kernels perform). A forecast of M members x S steps does M * S times this."""
    sampler = EnsembleSampler(cfg, dtype=jnp.bfloat16, attention_impl="xla")
    f32 = jnp.float32
    params = param_shapes(cfg)
    history = jax.ShapeDtypeStruct((1, cfg.num_history_steps, cfg.n_lon, cfg.n_lat, cfg.num_channels), f32)
    static = jax.ShapeDtypeStruct((cfg.n_lon, cfg.n_lat, cfg.num_static), f32)
    keys = jax.eval_shape(lambda: member_keys(jax.random.key(0), jnp.arange(1)))
    return count_flops(sampler.step, params, history, jax.ShapeDtypeStruct((1, 2), f32), static, keys,
                       jax.ShapeDtypeStruct((), jnp.int32))


StepFn = Callable[[Any, Array, Array, Array, Array, Array], tuple[Array, Array, Array]]
