"""Gathers over a fixed k-nearest-neighbour table whose gradients are gathers too.

The interpolations read, for each target point t and slot j, the row ``x[idx[t, j]]`` of a
source array. Autodiff turns each such gather into a scatter-add into the source, k of them
per interpolation. On a GPU a scatter-add with repeated indices is done with atomics: its
result depends on the order the threads land in (so a training step is not reproducible
without ``--xla_gpu_deterministic_ops``), and the k partial gradients are written out and
added one by one. Autodiff's k per-slot weight gradients also re-read the output's cotangent
once each. In the paper-era5 train step's roofline the interpolations' backward was 13.2 ms
per initial condition, against 1.4 ms for their forward.

The table is fixed geometry, so its transpose is known ahead of time: for each source row,
the (target, slot) pairs that read it. ``TransposePlan`` lays those pairs out as dense rows of
``width`` columns, and the backward sums them with gathers: every source gradient is the sum
of its own pairs in a fixed order, computed in one pass, with no atomics. Sources read by more
than ``width`` pairs (the HEALPix pixels near the poles, which the lat-lon grid oversamples)
continue on overflow rows that a second, small gather adds back. The weight gradient is one
reduction over all k slots, fused with its gather. The interpolations' backward is now 3.0 ms
and the step holds no scatter (experiments/results/train.md); CPU timings in
experiments/results/interpolation.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static argument of the VJPs
class TransposePlan:
    """Static tables that sum per-pair values ``(B, T*k [+1 zero], ...)`` into their sources.

    Pair ``p = t * k + j`` is slot j of target t. A table entry ``num_pairs`` is padding and
    reads the zero row appended to the pair values.
    """

    neighbours: np.ndarray  # (T, k) source index of each pair
    num_sources: int
    primary: np.ndarray  # (S, width): the first pairs of source s, in target order
    overflow: np.ndarray  # (E, width): further pairs of the sources read more than width times
    overflow_rows: np.ndarray  # (H, q): the overflow rows of each such source; E is padding
    overflow_slot: np.ndarray  # (S,): source s's row of overflow_rows; H (padding) if none

    @property
    def num_pairs(self) -> int:
        return self.neighbours.size


def _pick_width(counts: np.ndarray) -> int:
    """The row width that gathers the fewest rows in all: primary and overflow rows
    (padding included) plus the overflow rows gathered back per heavy source."""
    def gathered(width: int) -> int:
        extra = np.maximum(-(-counts // width) - 1, 0)
        return (counts.size + int(extra.sum())) * width + int(np.count_nonzero(extra)) * int(extra.max())
    return min(range(1, int(counts.max()) + 1), key=gathered)


def transpose_plan(neighbours: np.ndarray, num_sources: int, width: int | None = None) -> TransposePlan:
    """Builds the gather tables of the transpose of ``neighbours`` (T, k) into ``num_sources`` rows."""
    neighbours = np.asarray(neighbours)
    if neighbours.ndim != 2:
        raise ValueError(f"neighbours must be (targets, k); got shape {neighbours.shape}")
    if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= num_sources):
        raise ValueError(f"neighbour indices must lie in [0, {num_sources}); got "
                         f"[{neighbours.min()}, {neighbours.max()}]")
    pad = neighbours.size
    flat = neighbours.reshape(-1)
    order = np.argsort(flat, kind="stable")  # pairs grouped by source, each group in target order
    counts = np.bincount(flat, minlength=num_sources)
    width = width or _pick_width(np.maximum(counts, 1))
    # rank of each pair within its source's group -> (row chunk, column)
    source = flat[order]
    rank = np.arange(pad) - np.concatenate([[0], np.cumsum(counts)])[source]
    chunk, column = np.divmod(rank, width)
    extra_chunks = np.maximum(-(-counts // width) - 1, 0)  # overflow rows per source
    first_extra = np.concatenate([[0], np.cumsum(extra_chunks)])
    num_overflow = int(first_extra[-1])
    primary = np.full((num_sources, width), pad, np.int64)
    overflow = np.full((num_overflow, width), pad, np.int64)
    head = chunk == 0
    primary[source[head], column[head]] = order[head]
    overflow[first_extra[source[~head]] + chunk[~head] - 1, column[~head]] = order[~head]
    heavy = np.flatnonzero(extra_chunks)
    q = int(extra_chunks.max()) if heavy.size else 0
    overflow_rows = np.full((heavy.size, q), num_overflow, np.int64)
    for h, s in enumerate(heavy):  # the few sources read more than width times
        overflow_rows[h, :extra_chunks[s]] = np.arange(first_extra[s], first_extra[s + 1])
    overflow_slot = np.full(num_sources, heavy.size, np.int64)
    overflow_slot[heavy] = np.arange(heavy.size)
    as_int32 = functools.partial(np.asarray, dtype=np.int32)
    return TransposePlan(as_int32(neighbours), num_sources, as_int32(primary), as_int32(overflow),
                         as_int32(overflow_rows), as_int32(overflow_slot))


def sum_into_sources(pair_values: Callable[[np.ndarray], jax.Array], plan: TransposePlan) -> jax.Array:
    """``out[:, s] = sum of pair_values over the pairs that read source s`` (B, S, ...), gathers only.

    ``pair_values(ids)`` returns the values (B, len(ids), ...) of the pairs ``ids`` (an id equal
    to ``plan.num_pairs`` must give zeros). Each table column is one call, summed in order.
    """
    def rows_sum(table: np.ndarray) -> jax.Array:
        total = pair_values(table[:, 0])
        for m in range(1, table.shape[1]):
            total = total + pair_values(table[:, m])
        return total

    out = rows_sum(plan.primary)
    if plan.overflow.size:
        extra = _with_zero_row(rows_sum(plan.overflow))
        per_heavy = extra[:, plan.overflow_rows[:, 0]]
        for c in range(1, plan.overflow_rows.shape[1]):
            per_heavy = per_heavy + extra[:, plan.overflow_rows[:, c]]
        out = out + _with_zero_row(per_heavy)[:, plan.overflow_slot]
    return out


def _with_zero_row(x: jax.Array) -> jax.Array:
    """``x`` (B, R, ...) with a zero row R appended: padding entries of a table read it."""
    return jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1)


# ---------------------------------------------------------------------------------------------
# gather_neighbours: x (B, S, ...) -> x[:, neighbours] (B, T, k, ...)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gather_neighbours(x: jax.Array, plan: TransposePlan) -> jax.Array:
    """``x[:, plan.neighbours]``; its gradient sums into the sources with gathers (no scatter-add)."""
    return x[:, plan.neighbours]


def _gather_fwd(x, plan):
    return gather_neighbours(x, plan), None


def _gather_bwd(plan, _, cot):
    b, t, k = cot.shape[:3]
    flat = _with_zero_row(cot.reshape(b, t * k, *cot.shape[3:]))
    return (sum_into_sources(lambda ids: flat[:, ids], plan),)


gather_neighbours.defvjp(_gather_fwd, _gather_bwd)


# ---------------------------------------------------------------------------------------------
# weighted_neighbour_sum: out[b, t] = sum_j weights[b, t, j] * values[b, neighbours[t, j]]


def weighted_neighbour_sum_reference(weights: jax.Array, values: jax.Array, neighbours: np.ndarray) -> jax.Array:
    """The autodiff reference: weights (B, T, k, H), values (B, S, H, D) -> (B, T, H, D) float32.

    Summed one slot at a time, so no (B, T, k, H, D) tensor exists; its gradient is k
    scatter-adds into ``values``.
    """
    out = jnp.zeros((values.shape[0], neighbours.shape[0], *values.shape[2:]), jnp.float32)
    for j in range(neighbours.shape[1]):
        out = out + weights[:, :, j, :, None] * values[:, neighbours[:, j]].astype(jnp.float32)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def weighted_neighbour_sum(weights: jax.Array, values: jax.Array, plan: TransposePlan) -> jax.Array:
    """``weighted_neighbour_sum_reference`` whose ``values`` gradient is gathered per source.

    d values[s] = sum over the pairs (t, j) reading s of weights[t, j] * d out[t], each source's
    pairs in target order: deterministic, one pass, no (B, T, k, H, D) tensor.
    """
    return weighted_neighbour_sum_reference(weights, values, plan.neighbours)


def _wsum_fwd(weights, values, plan):
    return weighted_neighbour_sum(weights, values, plan), (weights, values)


def _wsum_bwd(plan, residuals, cot):
    weights, values = residuals
    b, t, k, h = weights.shape
    cot = cot.astype(jnp.float32)
    # one reduction over all k slots, which XLA fuses with the gather (no (B, T, k, H, D) buffer):
    # cot is read once, not once per slot as in autodiff's per-slot reductions
    d_weights = jnp.sum(cot[:, :, None] * values[:, plan.neighbours].astype(jnp.float32), axis=-1)
    flat_weights = _with_zero_row(weights.reshape(b, t * k, h).astype(jnp.float32))
    last_pair = plan.num_pairs - 1

    def pair_values(ids: np.ndarray) -> jax.Array:
        targets = np.minimum(ids, last_pair) // k  # padding ids read target T-1 with weight 0
        return flat_weights[:, ids, :, None] * cot[:, targets]

    d_values = sum_into_sources(pair_values, plan)
    return d_weights.astype(weights.dtype), d_values.astype(values.dtype)


weighted_neighbour_sum.defvjp(_wsum_fwd, _wsum_bwd)
