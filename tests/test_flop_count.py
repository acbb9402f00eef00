"""The jaxpr FLOP counter (MFU's numerator) against analytic counts of what each program does."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax.experimental import pallas as pl
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from mosaic_jax.attention.api import mosaic_attention
from mosaic_jax.config import get_config
from mosaic_jax.flop_count import UncountableError, count_flops
from mosaic_jax.sampler import member_step_flops
from mosaic_jax.training import TrainConfig
from mosaic_jax.training.train_step import train_step_flops
from pallas_kernels.mosaic_attention.flops import mosaic_flops

F32 = jnp.float32
M, K, N = 32, 64, 16
MATMUL = 2 * M * K * N


def sds(*shape, dtype=F32, sharding=None):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


@pytest.mark.parametrize("fn, args, expected", [
    (lambda a, b: a @ b, (sds(M, K), sds(K, N)), MATMUL),
    (lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b), (sds(3, M, K), sds(3, K, N)), 3 * MATMUL),
    (lambda a, b: jnp.einsum("mk,bkn->bmn", a, b), (sds(M, K), sds(5, K, N)), 5 * MATMUL),
    (lambda a, b: jnp.tanh(a @ b) + 1.0, (sds(M, K), sds(K, N)), MATMUL),  # elementwise work is not counted
])
def test_products_match_their_analytic_count(fn, args, expected):
    assert count_flops(fn, *args) == expected


def test_convolution_counts_its_multiply_adds():
    def conv(x, w):
        return lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME")

    # out (2, 4, 8, 8), each element a 3-channel x 3x3 window
    assert count_flops(conv, sds(2, 3, 8, 8), sds(4, 3, 3, 3)) == 2 * (2 * 4 * 8 * 8) * 3 * 9


def test_loop_bodies_count_once_per_iteration():
    def scanned(a, b):
        return lax.scan(lambda c, _: (c, c @ b), a, None, length=7)[1]

    def fori(a, b):
        return lax.fori_loop(0, 5, lambda i, c: jnp.tanh(c @ b) @ b.T, a)

    assert count_flops(scanned, sds(M, K), sds(K, N)) == 7 * MATMUL
    assert count_flops(fori, sds(M, K), sds(K, N)) == 5 * 2 * MATMUL


def test_cond_counts_the_costliest_branch():
    def f(p, a, b):
        return lax.cond(p, lambda: (a @ b) @ b.T @ b, lambda: a @ b)

    assert count_flops(f, sds(dtype=jnp.bool_), sds(M, K), sds(K, N)) == 3 * MATMUL


def test_gradient_and_remat_add_their_products():
    loss = lambda a, b: jnp.tanh(a @ b).sum()  # noqa: E731
    args = (sds(M, K), sds(K, N))
    assert count_flops(jax.grad(loss, argnums=(0, 1)), *args) == 3 * MATMUL  # dA = g b^T, dB = a^T g
    assert count_flops(jax.grad(jax.checkpoint(loss), argnums=(0, 1)), *args) == 4 * MATMUL  # + the recomputation


def test_shard_map_counts_every_shard():
    mesh = AbstractMesh((4,), ("d",))
    f = jax.shard_map(lambda a, b: a @ b, mesh=mesh, in_specs=(PartitionSpec("d"), PartitionSpec()),
                      out_specs=PartitionSpec("d"))
    a = sds(M, K, sharding=NamedSharding(mesh, PartitionSpec("d")))
    b = sds(K, N, sharding=NamedSharding(mesh, PartitionSpec()))
    assert count_flops(f, a, b) == MATMUL


def test_run_time_trip_counts_and_kernels_are_refused():
    def while_matmul(a, b):
        return lax.while_loop(lambda c: c[0, 0] < 1.0, lambda c: jnp.tanh(c @ b) @ b.T, a)

    with pytest.raises(UncountableError, match="while loop"):
        count_flops(while_matmul, sds(M, K), sds(K, N))

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] * 2.0

    doubled = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((8, 128), F32), interpret=True)
    with pytest.raises(UncountableError, match="attention_impl='xla'"):
        count_flops(doubled, sds(8, 128))


@pytest.mark.parametrize("batch, seq, q_heads, kv_heads, block, sparse_block, top_k", [
    (1, 2048, 4, 4, 512, 64, 4),  # GQA 1
    (2, 1024, 4, 2, 256, 64, 3),  # GQA 2
    (1, 4096, 8, 2, 1024, 128, 8),  # GQA 4, the published block sizes
])
def test_xla_attention_count_equals_the_branch_definitions(batch, seq, q_heads, kv_heads, block, sparse_block,
                                                           top_k):
    """The counter on the pure-JAX attention (whose selected branch is a scan over the top-k
    blocks) gives exactly the FLOPs the three branches define (pallas_kernels' flops.py)."""
    kw = dict(block_attn_size=block, sparse_block_size=sparse_block, top_k=top_k)
    q, kv = sds(batch, seq, q_heads, 64, dtype=jnp.bfloat16), sds(batch, seq, kv_heads, 64, dtype=jnp.bfloat16)
    counted = count_flops(lambda q, k, v, g: mosaic_attention(q, k, v, g, impl="xla", **kw), q, kv, kv,
                          sds(batch, seq, q_heads, 3))
    assert counted == mosaic_flops(batch, seq, q_heads, 64, **kw).forward


def test_train_step_costs_forward_and_backward_of_every_member():
    """Per initial condition, a train step is M member forecasts forward and backward: 3x the
    forward's matrix FLOPs (3.0 to 3.5 with the attention's backward as autodiff writes it),
    plus the recomputation when remat is on."""
    cfg = get_config("tiny")
    tc = TrainConfig(batch_size=2, ensemble_members=2, remat=False, compute_dtype="float32", total_steps=10,
                     warmup_steps=1)
    forward = member_step_flops(cfg)
    model = train_step_flops(cfg, tc)
    ratio = model / (tc.batch_size * tc.ensemble_members * forward)
    assert 3.0 <= ratio <= 3.5, ratio
    # linear in the batch, up to the batch-independent products (static fields)
    assert train_step_flops(cfg, tc, batch_size=4) == pytest.approx(2 * model, rel=1e-3)
    with_remat = train_step_flops(cfg, dataclasses.replace(tc, remat=True))
    assert model < with_remat <= model + tc.batch_size * tc.ensemble_members * forward * 1.0001
