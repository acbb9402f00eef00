"""The Mosaic U-Net: one forecast step as a pure function of parameters and inputs.

``Mosaic(cfg).apply(params, x, day_year, eps, static)`` maps normalized history states to
the next normalized state (SPEC.md, "Forward pass"). The per-member gaussian ``eps`` is an
explicit input, so samplers vmap over seeds and tests inject the fixture's draws.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax import grids
from mosaic_jax.attention import BatchSharding
from mosaic_jax.config import ModelConfig
from mosaic_jax.modules import (BlockStack, Downsample, Interpolation, Linear, Upsample, rms_norm,
                                standardize_static, time_features)

Dtype = Any


class Mosaic(nn.Module):
    """Encoder stages -> bottleneck -> decoder stages on nested HEALPix meshes.

    Attributes:
      cfg: architecture and data contract.
      dtype: compute dtype (parameters stay float32).
      attention_impl: ``"auto" | "xla" | "pallas" | "pallas-fused"`` (see ``mosaic_jax.attention``);
        also picks the cSwiGLU's kernels (``modules.CSwiGLU``).
      remat: rematerialise each transformer block in the backward pass.
      batch_sharding: inside a sharded jit, the mesh axes that split the batch; the Pallas
        kernels then run per device (``mosaic_jax.attention.api.per_device``).
    """

    cfg: ModelConfig
    dtype: Dtype = jnp.float32
    attention_impl: str = "auto"
    remat: bool = False
    batch_sharding: BatchSharding | None = None

    def setup(self) -> None:
        c, dt = self.cfg, self.dtype
        top = c.stages[0]
        self.to_noise = Linear(c.noise_dim, c.noise_dim, small=True, dtype=jnp.float32)
        self.preprocess_in = Linear(c.feature_dim, top.dim, dtype=dt)
        self.preprocess_out = Linear(top.dim, top.dim, dtype=dt)
        interp = functools.partial(Interpolation, top.dim, top.num_heads, c.n_lon, c.n_lat, top.nside,
                                   c.k_neighbors, dtype=dt)
        self.interp_to_hp = interp(to_healpix=True)
        self.interp_to_ll = interp(to_healpix=False)
        stack = functools.partial(BlockStack, rope_theta=c.rope_theta, noise_dim=c.noise_dim, dtype=dt,
                                  impl=self.attention_impl, remat=self.remat, batch_sharding=self.batch_sharding)
        self.encoder_stages = [stack(s, s.encoder_depth) for s in c.stages]
        self.bottleneck = stack(c.bottleneck, c.bottleneck.depth)
        # decoder_stages[0] is the deepest stage, as in the published checkpoints.
        self.decoder_stages = [stack(s, s.decoder_depth) for s in reversed(c.stages)]
        levels = list(c.stages) + [c.bottleneck]
        self.downsample_layers = [Downsample(lo.nside, hi.dim, lo.dim, dtype=dt)
                                  for hi, lo in zip(levels[:-1], levels[1:])]
        self.upsample_layers = [Upsample(lo.nside, lo.dim, hi.dim, dtype=dt)
                                for hi, lo in reversed(list(zip(levels[:-1], levels[1:])))]
        self.postprocess_hidden = Linear(top.dim, top.dim, dtype=dt)
        # a residual head starts small, so the untrained model is persistence plus a little noise
        self.postprocess_out = Linear(top.dim, c.num_channels, small=c.residual, dtype=dt)

    def input_features(self, x: jax.Array, day_year: jax.Array, static: jax.Array) -> jax.Array:
        """Per-point features (B, P, C*T + S + 3 + 4 [+ 2]): states t-major, statics + xyz, time
        [, local solar time]."""
        c = self.cfg
        b = x.shape[0]
        p = c.n_lon * c.n_lat
        states = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, p, c.num_history_steps * c.num_channels)
        static_cols = jnp.concatenate(
            [standardize_static(static.reshape(p, c.num_static)), jnp.asarray(grids.grid_xyz_standardized(
                c.n_lon, c.n_lat))], axis=-1)
        t = jnp.broadcast_to(time_features(day_year)[:, None, :], (b, p, 4))
        cols = [states.astype(jnp.float32), jnp.broadcast_to(static_cols[None], (b, p, static_cols.shape[-1])), t]
        if c.local_time_features:
            lon = jnp.asarray(grids.latlon_points(c.n_lon, c.n_lat)[0] / 360.0, jnp.float32)  # (P,) in turns
            ang = 2.0 * np.pi * (day_year[:, :1].astype(jnp.float32) + lon[None, :])  # (B, P)
            cols.append(jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1))
        return jnp.concatenate(cols, axis=-1)

    def __call__(self, x: jax.Array, day_year: jax.Array, eps: jax.Array, static: jax.Array) -> jax.Array:
        """One step.

        Args:
          x: normalized history states (B, T, lon, lat, C), oldest first.
          day_year: day and year progress of the latest state (B, 2).
          eps: raw standard-normal noise per member (B, noise_dim).
          static: static fields (lon, lat, S) in physical units (standardized here).
        Returns:
          the next normalized state (B, lon, lat, C), float32 (the head's output, or with
          ``cfg.residual`` the latest history state plus the head's output times ``residual_scale``).
        """
        c, dt = self.cfg, self.dtype
        expected = (c.num_history_steps, c.n_lon, c.n_lat, c.num_channels)
        if x.shape[1:] != expected:
            raise ValueError(f"x: expected (batch, {', '.join(map(str, expected))}), got {x.shape}")
        if static.shape != (c.n_lon, c.n_lat, c.num_static):
            raise ValueError(f"static: expected {(c.n_lon, c.n_lat, c.num_static)}, got {static.shape}")
        b = x.shape[0]
        z = self.to_noise(eps.astype(jnp.float32))
        h = self.preprocess_in(self.input_features(x, day_year, static))
        h = rms_norm(self.preprocess_out(nn.silu(rms_norm(h, dt))), dt)
        h = self.interp_to_hp(h)
        skips = []
        for stage, down in zip(self.encoder_stages, self.downsample_layers):
            h = stage(h, z)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h, z)
        for up, stage, skip in zip(self.upsample_layers, self.decoder_stages, reversed(skips)):
            h = stage(up(h, skip), z)
        h = self.interp_to_ll(rms_norm(h, dt))
        h = self.postprocess_out(nn.silu(self.postprocess_hidden(rms_norm(h, dt))))
        y = h.astype(jnp.float32).reshape(b, c.n_lon, c.n_lat, c.num_channels)
        if not c.residual:
            return y
        if c.residual_scale:
            y = y * jnp.asarray(c.residual_scale, jnp.float32)
        return x[:, -1].astype(jnp.float32) + y


def dummy_inputs(cfg: ModelConfig, batch: int = 1) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Abstract inputs for ``jax.eval_shape(model.init, ...)``."""
    f32 = jnp.float32
    return (jax.ShapeDtypeStruct((batch, cfg.num_history_steps, cfg.n_lon, cfg.n_lat, cfg.num_channels), f32),
            jax.ShapeDtypeStruct((batch, 2), f32),
            jax.ShapeDtypeStruct((batch, cfg.noise_dim), f32),
            jax.ShapeDtypeStruct((cfg.n_lon, cfg.n_lat, cfg.num_static), f32))


def param_shapes(cfg: ModelConfig) -> Any:
    """The parameter tree as ShapeDtypeStructs, without allocating (``jax.eval_shape``)."""
    model = Mosaic(cfg)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return jax.eval_shape(lambda k, *xs: model.init(k, *xs), key, *dummy_inputs(cfg))["params"]


def init_params(cfg: ModelConfig, key: jax.Array) -> Any:
    """From-scratch parameters (SPEC.md's init)."""
    x, dy, eps, static = (jnp.zeros(s.shape, s.dtype) for s in dummy_inputs(cfg))
    return jax.jit(Mosaic(cfg).init)(key, x, dy, eps, static)["params"]
