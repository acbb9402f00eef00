"""The xla Mosaic attention against a float64 numpy transcription of SPEC.md, branch by branch."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mosaic_jax.attention import default_impl, mosaic_attention, reference, require_kernel_device


def softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def np_attend(q, k, v):
    """q (Nq, d), k/v (Nk, d), float64."""
    return softmax(q @ k.T / np.sqrt(q.shape[-1])) @ v


def np_local(q, k, v, bs):
    b, n, hq, d = q.shape
    g = hq // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for i in range(hq):
            for s in range(0, n, bs):
                sl = slice(s, s + bs)
                out[bi, sl, i] = np_attend(q[bi, sl, i], k[bi, sl, i // g], v[bi, sl, i // g])
    return out


def np_pool(x, bs):
    b, n, h, d = x.shape
    return x.reshape(b, n // bs, bs, h, d).mean(2)


def np_compressed(q, k, v, bs):
    qp, kp, vp = np_pool(q, bs), np_pool(k, bs), np_pool(v, bs)
    g = q.shape[2] // k.shape[2]
    out = np.zeros_like(qp)
    for bi in range(q.shape[0]):
        for i in range(q.shape[2]):
            out[bi, :, i] = np_attend(qp[bi, :, i], kp[bi, :, i // g], vp[bi, :, i // g])
    return np.repeat(out, bs, axis=1)


def np_select(q, k, bs, top_k):
    """Strided-group scores (SPEC.md) and the top-k block indices, as sets per (b, h, qb)."""
    qp, kp = np_pool(q, bs), np_pool(k, bs)
    b, nb, hq, d = qp.shape
    hk = kp.shape[2]
    g = hq // hk
    scores = np.zeros((b, hk, nb, nb))
    for h in range(hk):
        for gi in range(g):
            qi = gi * hk + h
            scores[:, h] += np.einsum("bqd,bkd->bqk", qp[:, :, qi], kp[:, :, qi // g])
    scores /= g
    return scores, np.argsort(-scores, axis=-1)[..., :top_k]


def np_selected(q, k, v, idx, bs):
    b, n, hq, d = q.shape
    g = hq // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for i in range(hq):
            h = i // g
            for qb in range(n // bs):
                rows = np.concatenate([np.arange(j * bs, (j + 1) * bs) for j in idx[bi, h, qb]])
                sl = slice(qb * bs, (qb + 1) * bs)
                out[bi, sl, i] = np_attend(q[bi, sl, i], k[bi, rows, h], v[bi, rows, h])
    return out


def make_qkv(seed, b=1, n=64, hq=4, gqa=2, d=8):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, n, hq, d))
    k = rng.standard_normal((b, n, hq // gqa, d))
    v = rng.standard_normal((b, n, hq // gqa, d))
    return q, k, v


F32 = dict(rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("gqa", [1, 2, 4])
def test_local_branch(gqa):
    q, k, v = make_qkv(0, gqa=gqa)
    got = reference.local_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), 16)
    np.testing.assert_allclose(got, np_local(q, k, v, 16), **F32)


@pytest.mark.parametrize("gqa", [1, 2, 4])
def test_compressed_branch(gqa):
    q, k, v = make_qkv(1, gqa=gqa)
    got = reference.compressed_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), 8)
    np.testing.assert_allclose(got, np_compressed(q, k, v, 8), **F32)


@pytest.mark.parametrize("gqa", [1, 2, 4])
def test_selection_uses_strided_head_groups(gqa):
    q, k, _ = make_qkv(2, b=2, hq=8, gqa=gqa)
    scores_ref, idx_ref = np_select(q, k, 8, 3)
    qj, kj = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)
    np.testing.assert_allclose(reference.block_scores(qj, kj, 8), scores_ref, **F32)
    idx = np.asarray(reference.select_blocks(qj, kj, 8, 3))
    np.testing.assert_array_equal(np.sort(idx, -1), np.sort(idx_ref, -1))


def test_strided_grouping_differs_from_consecutive():
    """Guard the release's quirk: with GQA > 1 the consecutive grouping gives other scores."""
    q, k, _ = make_qkv(3, hq=8, gqa=4)
    qp, kp = np_pool(q, 8), np_pool(k, 8)
    consecutive = np.stack([np.einsum("bqgd,bkd->bqk", qp[:, :, h * 4:(h + 1) * 4], kp[:, :, h]) / 4
                            for h in range(2)], 1)
    got = np.asarray(reference.block_scores(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), 8))
    assert np.abs(got - consecutive).max() > 1e-2


@pytest.mark.parametrize("gqa", [1, 2, 4])
def test_selected_branch(gqa):
    q, k, v = make_qkv(4, b=2, gqa=gqa)
    nb, top_k = 64 // 8, 3
    rng = np.random.default_rng(5)
    # Duplicate-free random selections, forced to include the query's own block and the last block.
    idx = np.stack([rng.permutation(nb)[:top_k] for _ in range(2 * (4 // gqa) * nb)]).reshape(2, 4 // gqa, nb, top_k)
    idx[..., 0] = np.arange(nb)[None, None, :]
    idx[..., 1] = np.where(np.arange(nb) == nb - 1, 0, nb - 1)[None, None, :]
    got = reference.selected_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), jnp.asarray(idx), 8)
    np.testing.assert_allclose(got, np_selected(q, k, v, idx, 8), **F32)


@pytest.mark.parametrize("gqa", [1, 2, 4])
def test_mosaic_attention_matches_numpy(gqa):
    q, k, v = make_qkv(6, gqa=gqa)
    rng = np.random.default_rng(7)
    gates = softmax(rng.standard_normal((1, 64, 4, 3)))
    _, idx = np_select(q, k, 8, 2)
    expected = (gates[..., 0:1] * np_local(q, k, v, 16) + gates[..., 1:2] * np_compressed(q, k, v, 8)
                + gates[..., 2:3] * np_selected(q, k, v, idx, 8))
    got = mosaic_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v, gates)), block_attn_size=16,
                           sparse_block_size=8, top_k=2, impl="xla")
    np.testing.assert_allclose(got, expected, **F32)


def test_gradients():
    q, k, v = make_qkv(8, n=32, hq=4, gqa=2, d=4)
    gates = softmax(np.random.default_rng(9).standard_normal((1, 32, 4, 3)))
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in (q, k, v, gates))

        def f(q, k, v, gates):
            return mosaic_attention(q, k, v, gates, block_attn_size=16, sparse_block_size=8, top_k=2, impl="xla")

        check_grads(f, args, order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_bfloat16_inputs_accumulate_in_float32():
    q, k, v = make_qkv(10, gqa=2)
    gates = softmax(np.random.default_rng(11).standard_normal((1, 64, 4, 3)))
    kw = dict(block_attn_size=16, sparse_block_size=8, top_k=2, impl="xla")
    ref = mosaic_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v, gates)), **kw)
    got = mosaic_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), jnp.asarray(gates), **kw)
    assert got.dtype == jnp.float32
    assert float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref)) < 2e-2


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_attn_size=24, sparse_block_size=8, top_k=2), "block_attn_size"),
    (dict(block_attn_size=16, sparse_block_size=7, top_k=2), "sparse_block_size"),
    (dict(block_attn_size=16, sparse_block_size=8, top_k=9), "top_k"),
])
def test_bad_shapes_raise(kwargs, match):
    q, k, v = (jnp.zeros(s) for s in ((1, 64, 4, 8), (1, 64, 2, 8), (1, 64, 2, 8)))
    with pytest.raises(ValueError, match=match):
        mosaic_attention(q, k, v, jnp.zeros((1, 64, 4, 3)), impl="xla", **kwargs)


@pytest.mark.parametrize("platform, kind, capability, kernels_run", [
    ("cpu", "cpu", None, False),
    ("gpu", "NVIDIA H100 80GB HBM3", "9.0", True),
    ("gpu", "NVIDIA H200", "9.0", True),
    ("gpu", "NVIDIA GH200 480GB", "9.0", True),
    ("gpu", "NVIDIA A100-SXM4-80GB", "8.0", False),  # no wgmma
    ("gpu", "NVIDIA B200", "10.0", False),  # Blackwell: tcgen05, not Hopper's wgmma
])
def test_dispatch_follows_the_devices_compute_capability(monkeypatch, platform, kind, capability, kernels_run):
    device = types.SimpleNamespace(platform=platform, device_kind=kind)
    if capability:
        device.compute_capability = capability
    monkeypatch.setattr(jax, "devices", lambda *a: [device])
    assert default_impl() == ("pallas" if kernels_run else "xla")
    for impl in ("auto", "xla"):
        require_kernel_device(impl)  # never an error: these run anywhere
    for impl in ("pallas", "pallas-fused"):
        if kernels_run:
            require_kernel_device(impl)
        else:
            with pytest.raises(ValueError, match=rf"'{impl}'.*Hopper.*{capability or 'CPU'}.*Use 'auto'"):
                require_kernel_device(impl)
