"""Each module against an independent float64 numpy transcription of SPEC.md."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax import grids, modules
from mosaic_jax.config import StageConfig

TOL = dict(rtol=1e-5, atol=1e-5)


def kernels(variables):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])


def np_rms(x):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + np.finfo(np.float32).eps)


def silu(x):
    return x / (1 + np.exp(-x))


def test_rms_norm():
    x = np.random.default_rng(0).standard_normal((3, 5, 16)) * 3
    np.testing.assert_allclose(modules.rms_norm(jnp.asarray(x, jnp.float32), jnp.float32), np_rms(x), **TOL)


def test_rope_rotates_interleaved_pairs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 12, 3, 8))
    ang = grids.rope_angles(1, 8, 10000.0).astype(np.float64)  # (12, 4)
    expected = np.empty_like(x)
    c, s = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    expected[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    expected[..., 1::2] = x[..., 1::2] * c + x[..., 0::2] * s
    got = modules.apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(ang, jnp.float32))
    np.testing.assert_allclose(got, expected, **TOL)


def test_cswiglu():
    rng = np.random.default_rng(2)
    x, z = rng.standard_normal((2, 10, 16)), rng.standard_normal((2, 32))
    mod = modules.CSwiGLU(16, 24, 32)
    variables = mod.init(jax.random.key(0), jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32))
    p = kernels(variables)
    ab = x @ p["w13"]["kernel"]
    a, b = ab[..., :24], ab[..., 24:]
    expected = (silu(a + (z @ p["noise_bias"]["kernel"])[:, None]) * b) @ p["w2"]["kernel"]
    np.testing.assert_allclose(mod.apply(variables, jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32)),
                               expected, **TOL)


@pytest.mark.parametrize("to_healpix", [True, False])
def test_interpolation(to_healpix):
    n_lon, n_lat, nside, k, dim, heads = 16, 9, 2, 5, 16, 4
    n_src = 12 * nside**2 if not to_healpix else n_lon * n_lat
    x = np.random.default_rng(3).standard_normal((2, n_src, dim))
    mod = modules.Interpolation(dim, heads, n_lon, n_lat, nside, k, to_healpix)
    variables = mod.init(jax.random.key(1), jnp.asarray(x, jnp.float32))
    p = kernels(variables)
    idx, rel = grids.interpolation_geometry(n_lon, n_lat, nside, k, to_healpix)
    rel = rel.astype(np.float64)
    q = rel @ p["to_q"]["kernel"]  # (Nt, k, D) per (target, neighbour)
    kv = np_rms(x) @ p["to_kv"]["kernel"]
    kk, vv = kv[..., :dim][:, idx], kv[..., dim:][:, idx]  # (B, Nt, k, D)
    dh = dim // heads
    qh = q.reshape(*q.shape[:2], heads, dh)
    kh, vh = kk.reshape(*kk.shape[:3], heads, dh), vv.reshape(*vv.shape[:3], heads, dh)
    scores = np.einsum("tnhd,btnhd->btnh", qh, kh) / np.sqrt(dh)
    w = np.exp(scores - scores.max(2, keepdims=True))
    w /= w.sum(2, keepdims=True)
    out = np.einsum("btnh,btnhd->bthd", w, vh).reshape(2, -1, dim) @ p["to_o"]["kernel"]
    np.testing.assert_allclose(mod.apply(variables, jnp.asarray(x, jnp.float32)), out, **TOL)


def test_downsample_and_upsample():
    rng = np.random.default_rng(4)
    coarse = 2
    x_fine = rng.standard_normal((2, 12 * (2 * coarse) ** 2, 8))
    down = modules.Downsample(coarse, 8, 12)
    vd = down.init(jax.random.key(2), jnp.asarray(x_fine, jnp.float32))
    pd = kernels(vd)
    rel = grids.child_offsets(coarse).astype(np.float64)
    # Child-major concat of the 4 NESTED children of each parent.
    children = np.concatenate([x_fine[:, c::4] for c in range(4)], axis=-1)
    expected_down = np_rms(children @ pd["proj_x"]["kernel"] + rel @ pd["proj_pos"]["kernel"])
    y = down.apply(vd, jnp.asarray(x_fine, jnp.float32))
    np.testing.assert_allclose(y, expected_down, **TOL)

    up = modules.Upsample(coarse, 12, 8)
    skip = rng.standard_normal(x_fine.shape)
    vu = up.init(jax.random.key(3), y, jnp.asarray(skip, jnp.float32))
    pu = kernels(vu)
    proj = np.asarray(y, np.float64) @ pu["proj_x"]["kernel"] + rel @ pu["proj_pos"]["kernel"]  # (B, Nc, 4*8)
    fine = np.empty_like(skip)
    for c in range(4):
        fine[:, c::4] = proj[..., c * 8:(c + 1) * 8]
    np.testing.assert_allclose(up.apply(vu, y, jnp.asarray(skip, jnp.float32)), np_rms(fine + skip), **TOL)


def test_attention_module_gates_and_projections():
    """MosaicAttention = to_o(sum of gated branches) with RoPE'd q/k; checked against the branch reference."""
    from mosaic_jax.attention import reference

    cfg = StageConfig(nside=2, dim=16, num_heads=4, block_attn_size=16, sparse_block_size=4, sparse_block_count=2,
                      mlp_ratio=2.0, gqa_ratio=2)
    x = np.random.default_rng(5).standard_normal((1, 48, 16))
    mod = modules.MosaicAttention(cfg, 10000.0, impl="xla")
    variables = mod.init(jax.random.key(4), jnp.asarray(x, jnp.float32))
    p = kernels(variables)
    ang = grids.rope_angles(2, 4, 10000.0).astype(np.float64)

    def rope(t):
        out = np.empty_like(t)
        c, s = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
        out[..., 0::2] = t[..., 0::2] * c - t[..., 1::2] * s
        out[..., 1::2] = t[..., 1::2] * c + t[..., 0::2] * s
        return out

    q = rope((x @ p["to_q"]["kernel"]).reshape(1, 48, 4, 4))
    k = rope((x @ p["to_k"]["kernel"]).reshape(1, 48, 2, 4))
    v = (x @ p["to_v"]["kernel"]).reshape(1, 48, 2, 4)
    logits = (x @ p["to_strategy_combine_mlp"]["kernel"]).reshape(1, 48, 4, 3)  # (h s) layout
    gates = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    with jax.enable_x64(True):
        o = np.asarray(reference.mosaic_attention(q, k, v, gates, block_attn_size=16, sparse_block_size=4, top_k=2))
    expected = o.reshape(1, 48, 16) @ p["to_o"]["kernel"]
    np.testing.assert_allclose(mod.apply(variables, jnp.asarray(x, jnp.float32)), expected, rtol=1e-4, atol=1e-5)


def test_time_features_and_static_standardization():
    dy = np.array([[0.25, 0.6]])
    np.testing.assert_allclose(modules.time_features(jnp.asarray(dy, jnp.float32)),
                               [[1.0, 0.0, np.sin(2 * np.pi * 0.6), np.cos(2 * np.pi * 0.6)]], atol=1e-6)
    s = np.random.default_rng(6).standard_normal((30, 3)) * [1.0, 5.0, 0.0] + [0.0, 2.0, 1.0]
    expected = (s - s.mean(0)) / (s.std(0, ddof=1) + 1e-6)
    np.testing.assert_allclose(modules.standardize_static(jnp.asarray(s, jnp.float32)), expected, atol=1e-5)


def test_init_scales():
    """SPEC.md's from-scratch init: fan-in scaled normal, and N(0, 0.01) for output projections."""
    key = jax.random.key(0)
    w = np.asarray(modules.fan_in_init(key, (400, 100)))
    assert abs(w.std() - 400**-0.5 * (100 / 400) ** 0.5) < 2e-3
    w = np.asarray(modules.fan_in_init(key, (100, 400)))
    assert abs(w.std() - 0.1) < 5e-3
    assert abs(np.asarray(modules.small_init(key, (300, 300))).std() - 0.01) < 5e-4
