"""The building blocks of Mosaic as Flax linen modules (SPEC.md, "Forward pass").

Modules are functional (``init``/``apply``, no mutable state); geometry comes from
``grids`` as numpy constants. Parameters are float32; ``dtype`` is the compute dtype
(bfloat16 on GPU), with softmax, RoPE and normalisation statistics always in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax import grids
from mosaic_jax.neighbours import TransposePlan, gather_neighbours, transpose_plan, weighted_neighbour_sum
from mosaic_jax.attention import BatchSharding, default_impl, mosaic_attention, per_device
from mosaic_jax.config import ATTENTION_IMPLS, AttentionConfig
from mosaic_jax.cswiglu import GateKernels, cswiglu, cswiglu_reference

Dtype = Any


def fan_in_init(key: jax.Array, shape: tuple[int, int], dtype: Dtype = jnp.float32) -> jax.Array:
    """N(0, s) with s = fan_in^-1/2 * min(1, sqrt(fan_out/fan_in)) (SPEC.md, from-scratch init)."""
    fan_in, fan_out = shape
    std = fan_in**-0.5 * min(1.0, (fan_out / fan_in) ** 0.5)
    return std * jax.random.normal(key, shape, dtype)


def small_init(key: jax.Array, shape: tuple[int, int], dtype: Dtype = jnp.float32) -> jax.Array:
    """N(0, 0.01): output projections start near zero so each block starts near identity."""
    return 0.01 * jax.random.normal(key, shape, dtype)


class Linear(nn.Module):
    """Bias-free linear layer with an explicit input size (kernel ``(in, out)``, torch's ``weight.T``).

    The input size is explicit so the kernel exists after ``setup`` and parents can use it
    directly (the interpolation folds ``to_q`` into the keys).
    """

    in_features: int
    out_features: int
    small: bool = False
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        init = small_init if self.small else fan_in_init
        self.kernel = self.param("kernel", init, (self.in_features, self.out_features), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.kernel.astype(self.dtype))


def rms_norm(x: jax.Array, dtype: Dtype) -> jax.Array:
    """RMSNorm without scale, statistics in float32, eps = machine epsilon of ``dtype``."""
    eps = float(jnp.finfo(dtype).eps)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return y.astype(dtype)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotate interleaved pairs (2i, 2i+1) of the last axis by ``angles`` (N, d/2), in float32.

    x (B, N, H, d). ``o[2i] = x[2i] cos - x[2i+1] sin``, ``o[2i+1] = x[2i+1] cos + x[2i] sin``.
    """
    x32 = x.astype(jnp.float32)
    pairs = x32.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class MosaicAttention(nn.Module):
    """Projections, 2-D RoPE and branch gates around the three-branch attention."""

    cfg: AttentionConfig
    rope_theta: float
    dtype: Dtype = jnp.float32
    impl: str = "auto"
    batch_sharding: BatchSharding | None = None

    def setup(self) -> None:
        c = self.cfg
        kv = c.num_kv_heads * c.head_dim
        self.to_q = Linear(c.dim, c.dim, dtype=self.dtype)
        self.to_k = Linear(c.dim, kv, dtype=self.dtype)
        self.to_v = Linear(c.dim, kv, dtype=self.dtype)
        self.to_o = Linear(c.dim, c.dim, small=True, dtype=self.dtype)
        self.to_strategy_combine_mlp = Linear(c.dim, 3 * c.num_heads, dtype=self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        b, n, _ = x.shape
        angles = jnp.asarray(grids.rope_angles(c.nside, c.head_dim, self.rope_theta))
        q = apply_rope(self.to_q(x).reshape(b, n, c.num_heads, c.head_dim), angles)
        k = apply_rope(self.to_k(x).reshape(b, n, c.num_kv_heads, c.head_dim), angles)
        v = self.to_v(x).reshape(b, n, c.num_kv_heads, c.head_dim)
        logits = self.to_strategy_combine_mlp(x).reshape(b, n, c.num_heads, 3).astype(jnp.float32)
        gates = jax.nn.softmax(logits, axis=-1)
        o = mosaic_attention(q, k, v, gates, block_attn_size=c.block_attn_size,
                             sparse_block_size=c.sparse_block_size, top_k=c.sparse_block_count, impl=self.impl,
                             out_dtype=self.dtype, batch_sharding=self.batch_sharding)
        return self.to_o(o.reshape(b, n, c.dim))


class CSwiGLU(nn.Module):
    """SwiGLU whose gate is shifted by a per-member noise bias: the source of ensemble spread.

    ``impl`` follows the attention's (``mosaic_jax.attention``): ``"xla"`` is autodiff's form;
    ``"pallas"`` runs the gate's backward as one Pallas kernel (``mosaic_jax.cswiglu``);
    ``"pallas-fused"`` also runs the up-projection and its gate as one kernel in the forward
    (inference and training), never writing the (tokens, 2*hidden) product; under
    differentiation the backward recomputes that product, which remat does anyway;
    ``"auto"`` is ``"pallas"`` on an H100-class GPU where the kernels take the shapes and dtype,
    ``"xla"`` elsewhere.
    """

    dim: int
    hidden: int
    noise_dim: int
    dtype: Dtype = jnp.float32
    impl: str = "xla"
    batch_sharding: BatchSharding | None = None

    def setup(self) -> None:
        self.w13 = Linear(self.dim, 2 * self.hidden, dtype=self.dtype)
        self.w2 = Linear(self.hidden, self.dim, small=True, dtype=self.dtype)
        self.noise_bias = Linear(self.noise_dim, self.hidden, small=True, dtype=self.dtype)

    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        bias = self.noise_bias(z)  # (B, hidden)
        x, w13, w2 = (a.astype(self.dtype) for a in (x, self.w13.kernel, self.w2.kernel))
        kernels = self._kernels(x, bias)
        if kernels is None:
            return cswiglu_reference(x, w13, w2, bias)
        return cswiglu(x, w13, w2, bias, kernels)

    def _kernels(self, x: jax.Array, bias: jax.Array) -> GateKernels | None:
        impl = default_impl() if self.impl == "auto" else self.impl
        if impl == "xla":
            return None
        if impl not in ("pallas", "pallas-fused"):
            raise ValueError(f"impl must be one of {ATTENTION_IMPLS}, got {self.impl!r}")
        from pallas_kernels import gated_mlp  # GPU-only code, imported lazily

        gate_shape = jax.ShapeDtypeStruct((*x.shape[:2], self.hidden), x.dtype)
        try:
            gated_mlp.check_backward_shapes(gate_shape, gate_shape, gate_shape, bias)
        except ValueError:
            if self.impl == "auto":
                return None
            raise
        sharding = self.batch_sharding

        def gate_backward(a, b, dh, bias):
            return per_device(gated_mlp.gate_backward, sharding, (a, b, dh, bias))

        def up_projection(x, w13, bias):
            return per_device(lambda x, bias, w13: gated_mlp.gated_up_projection(x, w13, bias), sharding,
                              (x, bias), (w13,))

        return GateKernels(gate_backward, up_projection if impl == "pallas-fused" else None)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x += Attn(RMSNorm(x)); x += cSwiGLU(RMSNorm(x), z)``."""

    cfg: AttentionConfig
    rope_theta: float
    noise_dim: int
    dtype: Dtype = jnp.float32
    impl: str = "auto"
    batch_sharding: BatchSharding | None = None

    def setup(self) -> None:
        self.attention = MosaicAttention(self.cfg, self.rope_theta, self.dtype, self.impl, self.batch_sharding)
        self.ffn = CSwiGLU(self.cfg.dim, self.cfg.mlp_hidden, self.noise_dim, self.dtype, self.impl,
                           self.batch_sharding)

    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        x = x + self.attention(rms_norm(x, self.dtype))
        return x + self.ffn(rms_norm(x, self.dtype), z)


class BlockStack(nn.Module):
    """The blocks of one U-Net level (torch ``*.blocks.i``); optionally rematerialised per block."""

    cfg: AttentionConfig
    depth: int
    rope_theta: float
    noise_dim: int
    dtype: Dtype = jnp.float32
    impl: str = "auto"
    remat: bool = False
    batch_sharding: BatchSharding | None = None

    def setup(self) -> None:
        block = nn.remat(TransformerBlock) if self.remat else TransformerBlock
        self.blocks = [block(self.cfg, self.rope_theta, self.noise_dim, self.dtype, self.impl, self.batch_sharding)
                       for _ in range(self.depth)]

    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        for blk in self.blocks:
            x = blk(x, z)
        return x


@functools.cache
def interpolation_plan(n_lon: int, n_lat: int, nside: int, k: int, to_healpix: bool) -> TransposePlan:
    """The neighbour table of one interpolation with its transpose, built once per geometry."""
    idx, _ = grids.interpolation_geometry(n_lon, n_lat, nside, k, to_healpix)
    return transpose_plan(idx, n_lon * n_lat if to_healpix else 12 * nside**2)


class Interpolation(nn.Module):
    """k-nearest-neighbour cross-attention from one point set to another.

    Queries are the learned embedding of each neighbour's direction ``rel`` (3-vector), so
    ``q.k = rel . (W_q^T k)``: the 3-vector ``W_q^T k`` is formed once per source point
    and gathered, instead of a (targets, k, dim) query tensor. The values are summed one
    neighbour slot at a time, so memory stays O(targets * dim). Both gathers differentiate
    into gathers over the table's transpose (``neighbours``): no scatter-add, deterministic.
    """

    dim: int
    num_heads: int
    n_lon: int
    n_lat: int
    nside: int
    k_neighbors: int
    to_healpix: bool
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.to_q = Linear(3, self.dim, dtype=self.dtype)
        self.to_kv = Linear(self.dim, 2 * self.dim, dtype=self.dtype)
        self.to_o = Linear(self.dim, self.dim, small=True, dtype=self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        geometry = (self.n_lon, self.n_lat, self.nside, self.k_neighbors, self.to_healpix)
        rel = jnp.asarray(grids.interpolation_geometry(*geometry)[1])
        plan = interpolation_plan(*geometry)
        b, n_src, _ = x.shape
        if n_src != plan.num_sources:
            raise ValueError(f"interpolation expects {plan.num_sources} source points, got {n_src}")
        h, dh = self.num_heads, self.dim // self.num_heads
        # k and v from the halves of to_kv's weight, not a split of one product (see CSwiGLU)
        xn, w_kv = rms_norm(x, self.dtype), self.to_kv.kernel.astype(self.dtype)
        k = jnp.dot(xn, w_kv[:, : self.dim]).reshape(b, n_src, h, dh).astype(jnp.float32)
        v = jnp.dot(xn, w_kv[:, self.dim:]).reshape(b, n_src, h, dh)
        wq = self.to_q.kernel.astype(jnp.float32).reshape(3, h, dh)
        key_dirs = jnp.einsum("bshd,chd->bshc", k, wq)  # (B, N_src, H, 3)
        scores = jnp.einsum("tnc,btnhc->btnh", rel, gather_neighbours(key_dirs, plan)) * dh**-0.5
        weights = jax.nn.softmax(scores, axis=2)  # over the k neighbours, float32
        out = weighted_neighbour_sum(weights, v, plan)  # (B, N_target, H, dh) float32
        return self.to_o(out.astype(self.dtype).reshape(b, -1, self.dim))


class Downsample(nn.Module):
    """nside -> nside/2: concat the 4 NESTED children, project, add a position term, RMSNorm."""

    coarse_nside: int
    dim_in: int
    dim_out: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.proj_x = Linear(4 * self.dim_in, self.dim_out, dtype=self.dtype)
        self.proj_pos = Linear(12, self.dim_out, dtype=self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        rel = jnp.asarray(grids.child_offsets(self.coarse_nside))
        y = self.proj_x(x.reshape(b, n // 4, 4 * d)) + self.proj_pos(rel)[None]
        return rms_norm(y, self.dtype)


class Upsample(nn.Module):
    """nside/2 -> nside: project each parent to its 4 children, add the skip, RMSNorm."""

    coarse_nside: int
    dim_in: int
    dim_out: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.proj_x = Linear(self.dim_in, 4 * self.dim_out, small=True, dtype=self.dtype)
        self.proj_pos = Linear(12, 4 * self.dim_out, small=True, dtype=self.dtype)

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        rel = jnp.asarray(grids.child_offsets(self.coarse_nside))
        y = (self.proj_x(x) + self.proj_pos(rel)[None]).reshape(b, 4 * n, self.dim_out)
        return rms_norm(y + skip.astype(y.dtype), self.dtype)


def time_features(day_year: jax.Array) -> jax.Array:
    """``[sin 2 pi d, cos 2 pi d, sin 2 pi y, cos 2 pi y]`` from day/year progress (B, 2)."""
    ang = 2.0 * np.pi * day_year.astype(jnp.float32)
    return jnp.stack([jnp.sin(ang[:, 0]), jnp.cos(ang[:, 0]), jnp.sin(ang[:, 1]), jnp.cos(ang[:, 1])], axis=-1)


def standardize_static(static: jax.Array) -> jax.Array:
    """Per-field ``(s - mean) / (unbiased std + 1e-6)`` over the grid points; (P, S) float32."""
    s = static.astype(jnp.float32)
    return (s - s.mean(axis=0)) / (jnp.std(s, axis=0, ddof=1) + grids.STANDARDIZE_EPS)
