"""The gated up-projection kernel against a float32 reference, in GPU interpret mode (CPU).

As in test_mosaic_attention_kernels.py: traced under ``plgpu.force_gpu_interpret_mode`` with
race detection, so the TMA ring's barriers and the delayed slot release are simulated; relative
L2 errors against the product computed in float32 from the same 16-bit inputs, bounded by
2e-2 (issue 3's bound for 16-bit kernels).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gated_mlp import (
    GatedMlpConfig,
    check_shapes,
    gated_up_projection,
    gated_up_projection_forward,
    gated_up_projection_reference,
)
from pallas_kernels.testing import TOL_16BIT, interpret, rel_l2

def inputs(seed, b, n, d, hidden, dtype):
    ks = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(ks[0], (b, n, d)).astype(dtype)
    w13 = (jax.random.normal(ks[1], (d, 2 * hidden)) * d**-0.5).astype(dtype)
    bias = jax.random.normal(ks[2], (b, hidden))
    cot = jax.random.normal(ks[3], (b, n, hidden))
    return x, w13, bias, cot


def float32_product(x, w13, bias):
    """The definition, in float32 (SPEC.md cSwiGLU): silu(x W1 + bias) * (x W3)."""
    hidden = w13.shape[1] // 2
    x, w13 = x.astype(jnp.float32), w13.astype(jnp.float32)
    return nn.silu(x @ w13[:, :hidden] + bias[:, None, :]) * (x @ w13[:, hidden:])


# (batch, tokens, dim, hidden, dtype, config): one and two compute warpgroups, a ring of one slot
# (release at once) and of three (release one step late), a K loop shorter than the ring, 64-wide
# column tiles.
CASES = [
    (2, 256, 128, 256, jnp.bfloat16, GatedMlpConfig()),
    (1, 128, 192, 128, jnp.float16, GatedMlpConfig(max_concurrent_steps=1)),
    (1, 128, 64, 128, jnp.bfloat16, GatedMlpConfig(num_compute_wgs=1, max_concurrent_steps=3)),
    (3, 128, 256, 192, jnp.bfloat16, GatedMlpConfig(block_n=64, max_concurrent_steps=2)),
]


@pytest.mark.parametrize("b,n,d,hidden,dtype,config", CASES)
def test_kernel_matches_the_float32_product(b, n, d, hidden, dtype, config):
    x, w13, bias, _ = inputs(0, b, n, d, hidden, dtype)
    with interpret():
        h = gated_up_projection_forward(x, w13, bias, config)
    assert h.dtype == dtype and h.shape == (b, n, hidden)
    assert rel_l2(h, float32_product(x, w13, bias)) <= TOL_16BIT
    # the XLA composition (the backward's) is the same product
    assert rel_l2(gated_up_projection_reference(x, w13, bias), float32_product(x, w13, bias)) <= TOL_16BIT


def test_each_member_gets_its_own_bias():
    """Batch element i's rows are gated by bias[i] only: swapping two members' biases swaps their outputs."""
    x, w13, bias, _ = inputs(1, 2, 128, 128, 128, jnp.bfloat16)
    x = jnp.broadcast_to(x[:1], x.shape)  # the same tokens for both members
    with interpret():
        h = gated_up_projection_forward(x, w13, bias)
        h_swapped = gated_up_projection_forward(x, w13, bias[::-1])
    np.testing.assert_array_equal(np.asarray(h), np.asarray(h_swapped[::-1]))
    assert not np.array_equal(np.asarray(h[0]), np.asarray(h[1]))


def test_gradients_are_the_xla_compositions():
    x, w13, bias, cot = inputs(2, 2, 128, 128, 128, jnp.bfloat16)
    with interpret():
        _, vjp = jax.vjp(gated_up_projection, x, w13, bias)
        grads = vjp(cot.astype(jnp.bfloat16))
    _, vjp_ref = jax.vjp(gated_up_projection_reference, x, w13, bias)
    for name, g, g_ref in zip(["x", "w13", "bias"], grads, vjp_ref(cot.astype(jnp.bfloat16))):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(g_ref), err_msg=name)


@pytest.mark.parametrize("shapes, match", [
    (((1, 100, 128), (128, 256), (1, 128)), "tokens=100"),
    (((1, 128, 128), (128, 200), (1, 100)), "hidden=100"),
    (((1, 128, 96), (96, 256), (1, 128)), "dim=96"),
    (((1, 128, 128), (64, 256), (1, 128)), "w13"),
    (((2, 128, 128), (128, 256), (1, 128)), "bias"),
])
def test_shapes_the_kernel_cannot_take_are_refused(shapes, match):
    x, w, b = (jnp.zeros(s, jnp.bfloat16) for s in shapes)
    with pytest.raises(ValueError, match=match):
        check_shapes(x, w, b.astype(jnp.float32))


def test_float32_is_refused():
    with pytest.raises(ValueError, match="16-bit"):
        check_shapes(jnp.zeros((1, 128, 128)), jnp.zeros((128, 256)), jnp.zeros((1, 128)))


def test_cswiglu_module_fused_matches_xla():
    """The model's cSwiGLU with the kernel (inference) against its XLA path, same parameters."""
    from mosaic_jax.modules import CSwiGLU

    dim, hidden, noise_dim = 128, 256, 8
    x = jax.random.normal(jax.random.key(3), (2, 128, dim)).astype(jnp.bfloat16)
    z = jax.random.normal(jax.random.key(4), (2, noise_dim))
    xla = CSwiGLU(dim, hidden, noise_dim, dtype=jnp.bfloat16)
    params = xla.init(jax.random.key(5), x, z)
    # noise_bias starts at N(0, 0.01): scale it so the bias matters in the comparison
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a * 100.0 if "noise_bias" in jax.tree_util.keystr(p) else a, params)
    with interpret():
        fused = CSwiGLU(dim, hidden, noise_dim, dtype=jnp.bfloat16, impl="pallas-fused").apply(params, x, z)
    assert rel_l2(fused, xla.apply(params, x, z)) <= TOL_16BIT
