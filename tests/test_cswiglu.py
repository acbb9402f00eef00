"""cSwiGLU with the gate's backward as a kernel (``mosaic_jax.cswiglu``): forward identical to
autodiff's form, gradients against float64 autodiff with the kernel's XLA oracle plugged in,
and the module's dispatch. The Pallas kernel itself runs here in GPU interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax import modules
from mosaic_jax.cswiglu import GateKernels, cswiglu, cswiglu_reference
from pallas_kernels.gated_mlp import gate_backward, gate_backward_reference
from pallas_kernels.testing import TOL_16BIT, interpret, rel_l2

B, N, D, H = 2, 128, 64, 128
XLA_KERNELS = GateKernels(gate_backward_reference)


def operands(dtype, seed: int = 0):
    """x, w13, w2, bias and an output cotangent, scaled like the model's (unit activations)."""
    rng = np.random.default_rng(seed)
    shapes = ((B, N, D), (D, 2 * H), (H, D), (B, H), (B, N, D))
    scales = (1.0, D**-0.5, H**-0.5, 1.0, 1.0)
    return tuple(jnp.asarray(rng.standard_normal(s) * c, dtype) for s, c in zip(shapes, scales))


def grads(fn, x, w13, w2, bias, cot):
    return jax.grad(lambda *a: jnp.sum((fn(*a) * cot).astype(jnp.float32)), (0, 1, 2, 3))(x, w13, w2, bias)


def with_kernels(kernels):
    return lambda x, w13, w2, bias: cswiglu(x, w13, w2, bias, kernels)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_is_the_reference_op_for_op(dtype):
    args = operands(dtype)[:4]
    np.testing.assert_array_equal(jax.jit(with_kernels(XLA_KERNELS))(*args), jax.jit(cswiglu_reference)(*args))


def test_gradients_match_float64_autodiff():
    args = operands(jnp.float32)
    with jax.enable_x64(True):
        want = grads(cswiglu_reference, *(a.astype(jnp.float64) for a in args))
    got = grads(with_kernels(XLA_KERNELS), *args)
    for name, g, w in zip(("x", "w13", "w2", "bias"), got, want):
        assert g.dtype == jnp.float32, name
        assert rel_l2(g, w) < 1e-6, name


def test_bf16_gradients_are_no_less_accurate_than_autodiffs():
    """The gate's gradients in float32, rounded once: against float64 each is within bf16
    rounding and at least as close as autodiff's, which rounds every intermediate."""
    args = operands(jnp.bfloat16, seed=1)
    with jax.enable_x64(True):
        exact = grads(cswiglu_reference, *(a.astype(jnp.float64) for a in args))
    ours, autodiff = grads(with_kernels(XLA_KERNELS), *args), grads(cswiglu_reference, *args)
    for name, o, a, e in zip(("x", "w13", "w2", "bias"), ours, autodiff, exact):
        assert o.dtype == jnp.bfloat16, name
        assert rel_l2(o, e) < 1e-2, name
        assert rel_l2(o, e) <= 1.1 * rel_l2(a, e), name


def test_pallas_backward_matches_its_oracle_in_interpret_mode():
    args = operands(jnp.bfloat16, seed=2)
    want = grads(with_kernels(XLA_KERNELS), *args)
    with interpret():
        got = grads(with_kernels(GateKernels(gate_backward)), *args)
    for name, g, w in zip(("x", "w13", "w2", "bias"), got, want):
        assert g.dtype == w.dtype, name
        assert rel_l2(g, w) <= TOL_16BIT, name


def test_up_projection_runs_the_forward_and_the_backward_recomputes_the_products():
    """The Pallas forward kernel plugs in as ``up_projection``: it gives the forward's value,
    differentiated or not, while the gradients come from ``a``, ``b`` recomputed from x."""
    x, w13, w2, bias, cot = operands(jnp.float32)

    def doubled(x, w13, bias):  # a stand-in kernel whose output is told apart from the product's
        return 2.0 * jax.nn.silu(x @ w13[:, :H] + bias[:, None]) * (x @ w13[:, H:])

    kernels = GateKernels(gate_backward_reference, doubled)
    want_value = 2.0 * cswiglu_reference(x, w13, w2, bias)
    np.testing.assert_allclose(with_kernels(kernels)(x, w13, w2, bias), want_value, rtol=1e-6, atol=1e-6)
    value, vjp = jax.vjp(with_kernels(kernels), x, w13, w2, bias)
    np.testing.assert_allclose(value, want_value, rtol=1e-6, atol=1e-6)  # the kernel ran under jax.vjp
    _, vjp_ref = jax.vjp(cswiglu_reference, x, w13, w2, bias)
    for name, g, want in zip(("x", "w13", "w2", "bias"), vjp(cot), vjp_ref(cot)):
        assert rel_l2(g, want) < 1e-6, name


def module_grads(impl: str, dtype=jnp.bfloat16):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((B, N, D)), dtype)
    z = jnp.asarray(rng.standard_normal((B, 8)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((B, N, D)), jnp.float32)
    mod = modules.CSwiGLU(D, H, 8, dtype=dtype, impl=impl)
    params = modules.CSwiGLU(D, H, 8, dtype=dtype).init(jax.random.key(0), x, z)
    return jax.grad(lambda p, x, z: jnp.sum(mod.apply(p, x, z).astype(jnp.float32) * cot), (0, 1, 2))(params, x, z)


@pytest.mark.parametrize("impl", ["pallas", "pallas-fused"])
def test_module_pallas_gradients_match_xla_in_interpret_mode(impl):
    """modules.CSwiGLU through its parameters and noise input: the kernel paths (``pallas-fused``
    runs the gated up-projection kernel in the forward too) against autodiff."""
    want = module_grads("xla")
    with interpret():
        got = module_grads(impl)
    jax.tree.map(lambda g, w: rel_l2(g, w) <= TOL_16BIT or pytest.fail(f"{rel_l2(g, w)}"), got, want)


def test_module_dispatch_and_errors():
    xla = module_grads("xla", jnp.float32)
    jax.tree.map(np.testing.assert_array_equal, module_grads("auto", jnp.float32), xla)  # no H100 here
    with pytest.raises(ValueError, match="16-bit dtype"):
        module_grads("pallas", jnp.float32)
    with pytest.raises(ValueError, match="impl must be one of"):
        module_grads("triton")
