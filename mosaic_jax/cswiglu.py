"""The cSwiGLU feed-forward ``w2(silu(x W1 + bias) * (x W3))``: autodiff's form, and a form
whose backward runs the gate's gradients as one Pallas kernel.

Why two: compiled for the H100 inside the remat'd train step, autodiff's backward of the gate
reads and writes ten (tokens, hidden) activations per block in memory-bound fusions (3.6 GB
each at stage 1 of paper-era5, batch 6), and no hand-written XLA backward does better: XLA does
not fuse the gradients' sibling outputs (experiments/results/train.md). ``cswiglu`` keeps the
forward op for op and, in its backward, computes ``dh = dy W2^T`` and then h (for ``dW2``), da,
db and the noise bias's gradient with ``pallas_kernels.gated_mlp.gate_backward``: six passes.
With an ``up_projection`` kernel the forward never writes a and b, differentiated or not, and
the backward recomputes them from x; under per-block remat the backward recomputes the block's
forward anyway, so that costs nothing, and the forward's gate pass (three (tokens, hidden)
activations read or written) is gone from the train step. ``cswiglu_reference`` is the
autodiff form: the model's XLA path and the tests' oracle.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

UpProjection = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
GateBackward = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                        tuple[jax.Array, jax.Array, jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class GateKernels:
    """What ``cswiglu`` runs where XLA would: ``gate_backward(a, b, dh, bias) -> (h, da, db,
    dbias)`` in the backward, and optionally ``up_projection(x, w13, bias) -> h`` for the
    forward (inference and the train step's forward pass; the backward then recomputes
    ``a = x W1``, ``b = x W3``)."""

    gate_backward: GateBackward
    up_projection: UpProjection | None = None


def up_products(x: jax.Array, w13: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a = x W1``, ``b = x W3`` as two products from the halves of ``w13``.

    Two products rather than one split afterwards: the gradient of a split activation is two
    zero-padded (tokens, 2*hidden) buffers added together, that of a split weight only
    weight-sized (train-step roofline, experiments/results/train.md).
    """
    hidden = w13.shape[1] // 2
    return jnp.dot(x, w13[:, :hidden]), jnp.dot(x, w13[:, hidden:])


def gate(a: jax.Array, b: jax.Array, bias: jax.Array) -> jax.Array:
    """``silu(a + bias) * b`` in the compute dtype, bias (B, H) broadcast over tokens."""
    return jax.nn.silu(a + bias[:, None, :]) * b


def cswiglu_reference(x: jax.Array, w13: jax.Array, w2: jax.Array, bias: jax.Array) -> jax.Array:
    """x (B, N, D), w13 (D, 2H), w2 (H, D), bias (B, H), one dtype -> (B, N, D)."""
    return jnp.dot(gate(*up_products(x, w13), bias), w2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def cswiglu(x: jax.Array, w13: jax.Array, w2: jax.Array, bias: jax.Array, kernels: GateKernels) -> jax.Array:
    """``cswiglu_reference`` whose backward runs ``kernels.gate_backward``.

    The gradient's h, da and db are computed in float32 and rounded once (autodiff rounds each
    intermediate to the compute dtype), so they differ from autodiff's by bf16 rounding.
    """
    return _cswiglu_fwd(x, w13, w2, bias, kernels)[0]  # the residuals are dead code here


def _cswiglu_fwd(x, w13, w2, bias, kernels):
    if kernels.up_projection is not None:  # a and b never stored: the backward recomputes them
        return jnp.dot(kernels.up_projection(x, w13, bias), w2), (x, w13, w2, bias, None, None)
    a, b = up_products(x, w13)
    return jnp.dot(gate(a, b, bias), w2), (x, w13, w2, bias, a, b)


def _cswiglu_bwd(kernels, residuals, dy):
    x, w13, w2, bias, a, b = residuals
    if a is None:
        a, b = up_products(x, w13)
    hidden = w2.shape[0]
    h, da, db, dbias = kernels.gate_backward(a, b, jnp.dot(dy, w2.T), bias)
    dx = jnp.dot(da, w13[:, :hidden].T) + jnp.dot(db, w13[:, hidden:].T)
    dw13 = jnp.concatenate([jnp.einsum("bnd,bnh->dh", x, da), jnp.einsum("bnd,bnh->dh", x, db)], axis=1)
    dw2 = jnp.einsum("bnh,bnd->hd", h, dy)
    return dx.astype(x.dtype), dw13.astype(w13.dtype), dw2.astype(w2.dtype), dbias.astype(bias.dtype)


cswiglu.defvjp(_cswiglu_fwd, _cswiglu_bwd)
