"""Mosaic attention Pallas kernels against the pure-JAX reference, in GPU interpret mode.

Runs on the CPU: every kernel is traced under ``plgpu.force_gpu_interpret_mode`` with
race detection on, so barriers, TMA copies and wgmma are simulated (jax 0.11.2). The
reference runs in float32 on the same (upcast) inputs; errors are relative L2 norms,
bounded by 2e-2 for 16-bit inputs (issue 3). Uninitialized memory in interpret mode is
NaN, so an output element the kernel never wrote fails the finiteness check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax.attention import reference
from pallas_kernels import mosaic_attention as kernels
from pallas_kernels.mosaic_attention import flops, fused_kernel
from pallas_kernels.mosaic_attention.config import SelectionConfig
from pallas_kernels.mosaic_attention.selection_kernel import invert_selection, selection_forward
from pallas_kernels.testing import TOL_16BIT, interpret, rel_l2

def f32(x):
    return x.astype(jnp.float32)


def inputs(seed, b, n, hq, hk, d, dtype):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, n, hq, d), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, n, hk, d), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, n, hk, d), jnp.float32).astype(dtype)
    gates = jax.nn.softmax(jax.random.normal(ks[3], (b, n, hq, 3)), axis=-1)
    cot = jax.random.normal(ks[4], (b, n, hq, d), jnp.float32)
    return q, k, v, gates, cot


def random_selection(seed, b, hk, nb, top_k):
    """Duplicate-free rows that always contain the query's own block and the last block."""
    assert top_k >= 2
    rng = np.random.default_rng(seed)
    idx = np.empty((b, hk, nb, top_k), np.int32)
    for bi in range(b):
        for h in range(hk):
            for qb in range(nb):
                forced = [qb] if qb == nb - 1 else [qb, nb - 1]
                rest = rng.permutation([x for x in range(nb) if x not in forced])
                row = np.concatenate([forced, rest])[:top_k]
                idx[bi, h, qb] = rng.permutation(row)
    return jnp.asarray(idx)


def selected_lse_reference(q, k, indices, block_size):
    """Natural-log LSE (B, Hq, N) of the selected branch's scores, float32."""
    b, n, hq, d = q.shape
    hk, g, nb = k.shape[2], hq // k.shape[2], n // block_size
    qb = f32(q).reshape(b, nb, block_size, hk, g, d)
    kb = f32(k).reshape(b, nb, block_size, hk, d)
    sel = kb[jnp.arange(b)[:, None, None, None], indices, :, jnp.arange(hk)[None, :, None, None]]
    # sel (B, Hk, nb, top_k, bs, d) -> keys (B, Hk, nb, top_k*bs, d)
    keys = sel.reshape(b, hk, nb, -1, d)
    s = jnp.einsum("bqihgd,bhqjd->bhgqij", qb, keys) * d**-0.5
    lse = jax.nn.logsumexp(s, axis=-1)  # (B, Hk, G, nb, bs)
    return lse.reshape(b, hq, n)


# (batch, seq, Hq, Hk, head_dim, sparse_block, top_k, dtype): GQA 1, 2, 4; G*bs of 64 rows
# (one compute warpgroup) and 128+ rows (two compute warpgroups sharing each kv block).
SELECTION_CASES = [
    (1, 256, 1, 1, 64, 64, 3, jnp.bfloat16),
    (2, 256, 4, 2, 64, 64, 2, jnp.float16),
    (1, 512, 4, 1, 64, 128, 3, jnp.bfloat16),
]


@pytest.mark.parametrize("b,n,hq,hk,d,bs,top_k,dtype,config",
                         [pytest.param(*case, SelectionConfig(), id=f"case{i}") for i, case in enumerate(SELECTION_CASES)]
                         # the forward's and dq's exponentials under their own wgmma: same values and gradients
                         + [pytest.param(*SELECTION_CASES[1], SelectionConfig(intra_warpgroup_overlap=True),
                                         id="case1-overlap")])
def test_selected_attention_values_and_gradients(b, n, hq, hk, d, bs, top_k, dtype, config):
    q, k, v, _, cot = inputs(0, b, n, hq, hk, d, dtype)
    indices = random_selection(1, b, hk, n // bs, top_k)
    with interpret():
        o, vjp = jax.vjp(lambda q, k, v: kernels.selected_attention(q, k, v, indices, bs, config), q, k, v)
        grads = vjp(cot)
    o_ref, vjp_ref = jax.vjp(lambda q, k, v: reference.selected_attention(q, k, v, indices, bs),
                             f32(q), f32(k), f32(v))
    assert o.dtype == jnp.float32
    assert rel_l2(o, o_ref) <= TOL_16BIT
    for name, grad, grad_ref, x in zip("qkv", grads, vjp_ref(cot), (q, k, v)):
        assert grad.dtype == x.dtype, name
        assert rel_l2(grad, grad_ref) <= TOL_16BIT, name


# The forward kernels with the two compute warpgroups taking turns on the tensor cores
# (SelectionConfig.pingpong): same results; a miscounted turn would deadlock (interpret mode hangs).
# Each test launches each ping-pong kernel once: in one process, the third launch of the same
# ping-pong kernel hung GPU interpret mode on a 2-core machine, warpgroup 0's simulation never
# starting while warpgroup 1 waited for it (see bench_attention.py's --interpret-smoke).
PINGPONG = SelectionConfig(pingpong=True)
# Each warpgroup's softmax under its own next QK^T and PV (SelectionConfig.intra_warpgroup_overlap):
# same results. GPU interpret mode runs a wgmma synchronously, so what these show is the
# arithmetic and the ring and P-tile bookkeeping; that the waits let the wgmma run concurrently
# is checked in the compiled PTX (test_sm90_compile.py).
OVERLAP = SelectionConfig(intra_warpgroup_overlap=True)
FORWARD_SCHEDULES = [pytest.param(SelectionConfig(), id="default"), pytest.param(PINGPONG, id="pingpong"),
                     pytest.param(OVERLAP, id="overlap")]


@pytest.mark.parametrize("config", FORWARD_SCHEDULES)
def test_selection_forward_lse(config):
    b, n, hq, hk, d, bs, top_k = 1, 256, 2, 1, 64, 64, 3  # G*bs = 128 rows: two compute warpgroups
    q, k, v, _, _ = inputs(3, b, n, hq, hk, d, jnp.bfloat16)
    indices = random_selection(4, b, hk, n // bs, top_k)
    assert config.compute_wgs_for(hq // hk * bs) == 2
    with interpret():
        o, lse = selection_forward(q, k, v, indices, block_size=bs, config=config)
    assert rel_l2(lse, selected_lse_reference(q, k, indices, bs)) <= 1e-3
    assert rel_l2(o, reference.selected_attention(f32(q), f32(k), f32(v), indices, bs)) <= TOL_16BIT


@pytest.mark.parametrize("max_concurrent_steps, top_k", [(1, 3), (3, 2)])
def test_overlapped_forward_with_any_ring_depth(max_concurrent_steps, top_k):
    """The intra-warpgroup overlap reads block j+1's K while block j's V is in use: with a
    one-slot ring both are in slot 0, and with more slots than blocks the ring never wraps.
    GQA 1, so one compute warpgroup (G*bs = 64 rows); float16."""
    b, n, hq, hk, d, bs = 2, 256, 1, 1, 64, 64
    config = SelectionConfig(intra_warpgroup_overlap=True, max_concurrent_steps=max_concurrent_steps)
    assert config.compute_wgs_for(hq // hk * bs) == 1
    q, k, v, _, _ = inputs(13, b, n, hq, hk, d, jnp.float16)
    indices = random_selection(14, b, hk, n // bs, top_k)
    with interpret():
        o, lse = selection_forward(q, k, v, indices, block_size=bs, config=config)
    assert rel_l2(lse, selected_lse_reference(q, k, indices, bs)) <= 1e-3
    assert rel_l2(o, reference.selected_attention(f32(q), f32(k), f32(v), indices, bs)) <= TOL_16BIT


def test_forward_schedules_are_exclusive():
    with pytest.raises(ValueError, match="pingpong and intra_warpgroup_overlap"):
        SelectionConfig(pingpong=True, intra_warpgroup_overlap=True)


def test_local_attention_values_and_gradients():
    b, n, hq, hk, d, block = 1, 512, 2, 1, 64, 256  # local tile 128: 2 kv tiles per block
    q, k, v, _, cot = inputs(5, b, n, hq, hk, d, jnp.bfloat16)
    with interpret():
        o, vjp = jax.vjp(lambda q, k, v: kernels.local_attention(q, k, v, block), q, k, v)
        grads = vjp(cot)
    o_ref, vjp_ref = jax.vjp(lambda q, k, v: reference.local_attention(q, k, v, block), f32(q), f32(k), f32(v))
    assert rel_l2(o, o_ref) <= TOL_16BIT
    for name, grad, grad_ref in zip("qkv", grads, vjp_ref(cot)):
        assert rel_l2(grad, grad_ref) <= TOL_16BIT, name


@pytest.mark.parametrize("config", FORWARD_SCHEDULES)
def test_mosaic_attention_values_and_gradients(config):
    b, n, hq, hk, d = 1, 256, 2, 1, 64
    kw = dict(block_attn_size=128, sparse_block_size=64, top_k=2)
    q, k, v, gates, cot = inputs(6, b, n, hq, hk, d, jnp.bfloat16)
    with interpret():
        o, vjp = jax.vjp(lambda *a: kernels.mosaic_attention(*a, config=config, **kw), q, k, v, gates)
        grads = vjp(cot)
    o_ref, vjp_ref = jax.vjp(lambda *a: reference.mosaic_attention(*a, **kw), f32(q), f32(k), f32(v), gates)
    assert rel_l2(o, o_ref) <= TOL_16BIT
    for name, grad, grad_ref in zip(["q", "k", "v", "gates"], grads, vjp_ref(cot)):
        assert rel_l2(grad, grad_ref) <= TOL_16BIT, name


# (batch, seq, Hq, Hk, head_dim, block_attn, sparse_block, top_k, dtype, out_dtype): the local tile
# equals the sparse block (128 or 64 tokens), GQA 1, 2, 4; output in the inputs' dtype or float32.
FUSED_CASES = [
    (1, 512, 2, 2, 64, 256, 128, 2, jnp.bfloat16, jnp.bfloat16),
    (2, 384, 4, 2, 64, 192, 64, 3, jnp.float16, jnp.float32),
    (1, 512, 4, 1, 64, 256, 128, 3, jnp.bfloat16, jnp.bfloat16),
]


@pytest.mark.parametrize("b,n,hq,hk,d,block,bs,top_k,dtype,out_dtype,config",
                         [pytest.param(*case, SelectionConfig(), id=f"case{i}") for i, case in enumerate(FUSED_CASES)]
                         + [pytest.param(*FUSED_CASES[0], PINGPONG, id="case0-pingpong"),
                            pytest.param(*FUSED_CASES[1], OVERLAP, id="case1-overlap")])
def test_fused_forward_is_the_gated_sum_of_the_three_branches(b, n, hq, hk, d, block, bs, top_k, dtype, out_dtype,
                                                              config):
    assert fused_kernel.can_fuse(block, bs)
    q, k, v, gates, _ = inputs(9, b, n, hq, hk, d, dtype)
    indices = random_selection(10, b, hk, n // bs, top_k)
    o_cmp = reference.compressed_block_attention(q, k, v, bs)
    with interpret():
        o = fused_kernel.fused_attention(q, k, v, gates, indices, o_cmp, block, bs, out_dtype, config)
    q32, k32, v32 = f32(q), f32(k), f32(v)
    o_ref = (gates[..., 0:1] * reference.local_attention(q32, k32, v32, block)
             + gates[..., 1:2] * reference.compressed_attention(q32, k32, v32, bs)
             + gates[..., 2:3] * reference.selected_attention(q32, k32, v32, indices, bs))
    assert o.dtype == out_dtype
    assert rel_l2(o, o_ref) <= TOL_16BIT


def test_fused_attention_gradients_are_the_branch_kernels():
    """Under differentiation the fused call runs the two branch kernels, whose VJPs give the
    gradients: exactly those of the unfused composition, the compressed rows' included."""
    b, n, hq, hk, d, block, bs, top_k = 1, 512, 4, 2, 64, 256, 128, 2
    q, k, v, gates, cot = inputs(11, b, n, hq, hk, d, jnp.bfloat16)
    indices = random_selection(12, b, hk, n // bs, top_k)
    o_cmp = reference.compressed_block_attention(q, k, v, bs)

    def unfused(q, k, v, g, c):
        return (g[..., 0:1] * kernels.local_attention(q, k, v, block)
                + g[..., 1:2] * jnp.repeat(c, bs, axis=1)
                + g[..., 2:3] * kernels.selected_attention(q, k, v, indices, bs))

    with interpret():
        o, vjp = jax.vjp(lambda q, k, v, g, c: fused_kernel.fused_attention(q, k, v, g, indices, c, block, bs),
                         q, k, v, gates, o_cmp)
        grads = vjp(cot)
        o_unfused, vjp_unfused = jax.vjp(unfused, q, k, v, gates, o_cmp)
        grads_unfused = vjp_unfused(cot)
    np.testing.assert_array_equal(np.asarray(o), np.asarray(o_unfused))  # differentiated: the same kernels
    for name, grad, grad_unfused in zip(["q", "k", "v", "gates", "o_cmp"], grads, grads_unfused):
        np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_unfused), err_msg=name)


def test_mosaic_attention_with_the_fused_forward():
    b, n, hq, hk, d = 1, 512, 4, 1, 64
    kw = dict(block_attn_size=256, sparse_block_size=128, top_k=2)
    q, k, v, gates, _ = inputs(13, b, n, hq, hk, d, jnp.bfloat16)
    with interpret():
        o = kernels.mosaic_attention(q, k, v, gates, config=SelectionConfig(fuse_forward=True), **kw)
        o16 = kernels.mosaic_attention(q, k, v, gates, config=SelectionConfig(fuse_forward=True),
                                       out_dtype=jnp.bfloat16, **kw)
    o_ref = reference.mosaic_attention(f32(q), f32(k), f32(v), gates, **kw)
    assert o.dtype == jnp.float32 and o16.dtype == jnp.bfloat16
    assert rel_l2(o, o_ref) <= TOL_16BIT
    # the same float32 sum, rounded once to bfloat16 in the kernel's epilogue
    np.testing.assert_array_equal(np.asarray(o16), np.asarray(o.astype(jnp.bfloat16)))


@pytest.mark.parametrize("impl, kw", [
    ("pallas", dict(block_attn_size=128, sparse_block_size=64, top_k=2)),
    ("pallas-fused", dict(block_attn_size=256, sparse_block_size=128, top_k=2)),  # fusable: local tile 128
])
def test_dispatch_forced_pallas_matches_xla(impl, kw):
    from mosaic_jax.attention import api

    q, k, v, gates, _ = inputs(7, 1, 512, 2, 2, 64, jnp.bfloat16)
    with interpret():
        o = api.mosaic_attention(q, k, v, gates, impl=impl, **kw)
    o_ref = api.mosaic_attention(f32(q), f32(k), f32(v), gates, impl="xla", **kw)
    assert rel_l2(o, o_ref) <= TOL_16BIT


def test_invert_selection_lists_every_selecting_block_in_order():
    indices = random_selection(8, 2, 2, 6, 3)
    inv, offsets = invert_selection(indices, 6)
    inv, offsets, idx = np.asarray(inv), np.asarray(offsets), np.asarray(indices)
    for bi in range(2):
        for h in range(2):
            for kb in range(6):
                expect = [qb for qb in range(6) if kb in idx[bi, h, qb]]
                got = inv[bi, h, offsets[bi, h, kb]:offsets[bi, h, kb + 1]].tolist()
                assert got == expect


@pytest.mark.parametrize("change,match", [
    (dict(dtype=jnp.float32), "bfloat16 or float16"),
    (dict(d=32), "head_dim"),
    (dict(bs=96), "sparse_block_size"),
    (dict(top_k=9), "top_k"),
    (dict(block=96), "block_attn_size"),
])
def test_unsupported_shapes_raise_value_error(change, match):
    p = dict(dtype=jnp.bfloat16, d=64, bs=64, top_k=2, block=128) | change
    q, k, v, gates, _ = inputs(9, 1, 512, 2, 1, p["d"], p["dtype"])
    with pytest.raises(ValueError, match=match):
        kernels.mosaic_attention(q, k, v, gates, block_attn_size=p["block"], sparse_block_size=p["bs"],
                                 top_k=p["top_k"])
    with pytest.raises(NotImplementedError):  # also a NotImplementedError, for fallback dispatch
        kernels.check_kernel_shapes(q, k, v, sparse_block_size=p["bs"], top_k=p["top_k"],
                                    block_attn_size=p["block"])


def test_flop_counts_stage1():
    # Stage-1 shape of the published config: 49,152 tokens, 1024 / 128 / top-24.
    f = flops.mosaic_flops(1, 49_152, 1, 64, block_attn_size=1024, sparse_block_size=128, top_k=24)
    assert f.local == 4 * 49_152 * 1024 * 64
    assert f.selected == 4 * 49_152 * 24 * 128 * 64
    assert f.compressed == 4 * 384 * 384 * 64
    assert f.forward_backward == pytest.approx(f.forward + 2.5 * (f.local + f.compressed + f.selected))
