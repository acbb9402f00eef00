"""Matrix-unit FLOPs of a JAX function, counted from its jaxpr: the numerator of MFU.

Why not XLA's cost analysis: it counts a ``while`` body once, not once per iteration
(the xla attention's selected branch is a ``lax.scan`` over the top-k blocks, so at the
published stage-1 shape it reports 29% of the attention's FLOPs), and it counts a Pallas
kernel (a custom call) as zero. Counting the traced program instead gives the FLOPs the
model defines, whichever backend or kernels run it:

* ``dot_general``: 2 x (batch x free x contracting) per product; convolutions likewise.
* ``scan``: the body times ``length``; ``cond``: the costliest branch.
* calls (``jit``, ``remat``, ``custom_vjp``/``custom_jvp``, ``shard_map``): their body;
  a ``shard_map`` body sees per-shard shapes, so it is multiplied by the number of shards.
* a ``while`` loop whose trip count is not static, or a ``pallas_call`` (its grid and body
  are opaque here), raises ``UncountableError``: count the pure-JAX path instead
  (``attention_impl="xla"``), which defines the same FLOPs as the kernels.

Elementwise work (softmax exponentials, norms, activations) is not counted, as in the
usual MFU convention (PaLM, appendix B): MFU measures the matrix units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core


class UncountableError(ValueError):
    """The program holds an operation whose FLOPs cannot be read from the jaxpr."""


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    contract = math.prod(lhs.shape[i] for i in lhs_contract)
    batch = math.prod(lhs.shape[i] for i in lhs_batch)
    # lhs.size / (batch*contract) = lhs free; rhs.size / (batch*contract) = rhs free.
    return 2.0 * (lhs.size // (batch * contract)) * (rhs.size // (batch * contract)) * contract * batch


def _conv_flops(eqn) -> float:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    out = eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    # out elements x (kernel spatial x input features per group) multiply-adds
    kernel_in = rhs.shape[dn.rhs_spec[1]]
    kernel_spatial = math.prod(rhs.shape[i] for i in dn.rhs_spec[2:])
    return 2.0 * out.size * kernel_in * kernel_spatial


def _sub_jaxprs(params: dict[str, Any]):
    for value in params.values():
        if isinstance(value, jex_core.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, jex_core.Jaxpr):
            yield value


def _shard_count(params: dict[str, Any]) -> int:
    mesh = params.get("mesh")
    manual = params.get("manual_axes") or params.get("axis_names") or ()
    if mesh is None:
        return 1
    shape = dict(mesh.shape)
    return math.prod(shape[a] for a in manual) if manual else math.prod(shape.values())


def jaxpr_flops(jaxpr: jex_core.Jaxpr) -> float:
    """Matrix FLOPs of ``jaxpr`` (see the module docstring for what counts)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
        elif name == "while":
            body = jaxpr_flops(eqn.params["body_jaxpr"].jaxpr) + jaxpr_flops(eqn.params["cond_jaxpr"].jaxpr)
            if body:
                raise UncountableError("a while loop with matrix products and no static trip count: its FLOPs "
                                       "depend on run-time values")
        elif name == "pallas_call":
            raise UncountableError("a Pallas kernel's FLOPs are not visible in the jaxpr; count the pure-JAX "
                                   "path (attention_impl='xla'), which defines the same FLOPs")
        elif name == "shard_map":
            total += _shard_count(eqn.params) * sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
        else:  # jit, remat, custom_jvp/vjp calls and anything else that carries a body
            total += sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
    return total


def count_flops(fn: Callable, *args: Any) -> float:
    """Matrix FLOPs of one call ``fn(*args)``; args may be ShapeDtypeStructs (nothing runs)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
