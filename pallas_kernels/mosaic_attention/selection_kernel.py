"""Selection branch of Mosaic attention as Mosaic GPU (Hopper) Pallas kernels.

Every query block ``qb`` of ``bs = sparse_block_size`` tokens and kv head ``h`` attends
over the ``top_k`` kv blocks ``indices[b, h, qb, :]`` of that kv head (SPEC.md, "Mosaic
attention", selected branch). The G query heads that read kv head h (consecutive heads
``h*G .. h*G+G-1``) share the selection, so their ``G*bs`` query rows are packed into one
row space and processed against each streamed kv block: the tensor cores see M = G*bs
rows per kv tile and every kv block is read once per (qb, h), not once per query head.

Three kernels, all warp-specialized (``num_compute_wgs`` compute warpgroups + 1 memory
warpgroup that streams tiles through a TMA ring of ``max_concurrent_steps`` slots):

* forward: per 64-row query tile, online softmax over the selected blocks in float32;
  returns o (float32) and the natural-log log-sum-exp ``lse`` (B, Hq, N). Its softmax
  (``_softmax_loop``) runs on one of three schedules: wgmma then softmax in turn (default),
  the two compute warpgroups taking turns on the tensor cores (``pingpong``), or each
  warpgroup's softmax under its own next QK^T and PV (``intra_warpgroup_overlap``).
* dq: same grid as the forward, recomputes P from lse, ``dq = scale * dS @ K``. With
  ``intra_warpgroup_overlap`` P's exponentials run under the dP = dO V^T wgmma.
* dk/dv: one CTA per (kv block, kv head); it walks the list of (query block, head) pairs
  that selected its block -- the inverse of the selection, built on device by a stable
  sort (``invert_selection``) -- so each dk/dv tile is owned by one CTA and summed in a
  fixed order: deterministic, no atomics.

Grid order (block, tile, kv head, batch): Mosaic GPU squashes the leading two axes into
CUDA's slowest one, so the CTAs that stream the same kv blocks -- the tiles of one (query
block, kv head) -- launch next to each other and find those blocks in L2.

The selection indices stay on device: the memory warpgroup reads ``indices[b, h, qb, j]``
(and the inverse lists) from GMEM as scalars and issues the TMA copy of that block.

Interpret mode (CPU) constraints that shape the code, jax 0.11.2: ``pl.run_state`` and
``wgmma_accumulator_store`` are not interpreted, and a wgmma's A operand must be a ref.
So each product uses a fresh ``plgpu.ACC`` in ``pl.run_scoped`` and is added to the
register accumulator, and P / dS are staged through swizzled SMEM before their wgmma.
The same code is what runs on the GPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.hopper import warp_specialized, wgmma_operand_transforms
from pallas_kernels.mosaic_attention.config import BLOCK_Q, DEFAULT_CONFIG, SelectionConfig

T = TypeVar("T")
LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


def _matmul(a_ref, b_ref, shape, while_running: Callable[[], None] | None = None) -> jax.Array:
    """``a @ b`` on the tensor cores into a fresh float32 accumulator, returned as a value;
    ``while_running`` runs after the wgmma is issued, before waiting for its result."""

    def body(acc_ref):
        plgpu.wgmma(acc_ref, a_ref, b_ref)
        if while_running is not None:
            while_running()
        return acc_ref[...]

    return pl.run_scoped(body, plgpu.ACC(shape, jnp.float32))


def _matmul_pair(first, second, under_second: Callable[[jax.Array], T],
                 before_second: Callable[[], None] | None = None) -> tuple[T, jax.Array]:
    """Two products on the tensor cores, each ``(a_ref, b_ref, out_shape)`` into a fresh float32
    accumulator: issue ``first``, (``before_second``,) issue ``second``, wait for the first
    alone (wgmma groups complete in order), run ``under_second`` on its result while the
    second may still run, then wait for the second. Returns (under_second's result, second)."""

    def with_first(acc1):
        plgpu.wgmma(acc1, first[0], first[1])
        if before_second is not None:
            before_second()

        def with_second(acc2):
            plgpu.wgmma(acc2, second[0], second[1])
            out = under_second(plgpu.wgmma_accumulator_load(acc1, wait_n=1))
            return out, plgpu.wgmma_accumulator_load(acc2, wait_n=0)

        return pl.run_scoped(with_second, plgpu.ACC(second[2], jnp.float32))

    return pl.run_scoped(with_first, plgpu.ACC(first[2], jnp.float32))


def _row_bcast(x: jax.Array, shape) -> jax.Array:
    return lax.broadcast_in_dim(x, shape, [0])


class _QueryBlockGrid(NamedTuple):
    """The grid of the kernels that stream kv blocks for query blocks (forward, dq, fused forward).

    One CTA per (query block, tile group, kv head, batch): the G*bs query rows of a (query
    block, kv head) share its selection, and each of the CTA's ``wgs`` compute warpgroups
    takes one 64-row tile of them. ``num_blocks`` kv blocks stream through a ``steps``-slot ring.
    """

    g: int  # query heads per kv head
    block_size: int
    num_blocks: int
    wgs: int
    steps: int
    shape: tuple[int, int, int, int]  # (query blocks, tile groups, kv heads, batch)

    @classmethod
    def of(cls, q, k, indices, block_size: int, config: SelectionConfig) -> _QueryBlockGrid:
        b, n, hq, _ = q.shape
        hk = k.shape[2]
        g = hq // hk
        num_blocks = indices.shape[-1]
        wgs = config.compute_wgs_for(g * block_size)
        tiles = g * block_size // BLOCK_Q // wgs
        return cls(g, block_size, num_blocks, wgs, min(config.max_concurrent_steps, num_blocks),
                   (n // block_size, tiles, hk, b))

    def query_tile(self, qb, h, wg):
        """Token start and query head of compute warpgroup ``wg``'s 64-row tile of (query block
        qb, kv head h), inside the kernel.

        Rows of the packed (G*bs) space are ``g*bs + token``; bs % 64 == 0, so a tile never
        straddles two heads.
        """
        row0 = (lax.axis_index("tile") * self.wgs + wg) * BLOCK_Q
        head = h * self.g + lax.div(row0, jnp.int32(self.block_size))
        tok = qb * self.block_size + lax.rem(row0, jnp.int32(self.block_size))
        return tok, head


def _cta_coords(block_axis: str):
    """Inside a kernel of ``_launch``: (batch, kv head, block, warpgroup) indices."""
    return lax.axis_index("b"), lax.axis_index("h"), lax.axis_index(block_axis), lax.axis_index("wg")


def _launch(body, *, out_type, scratch, grid: tuple[int, int, int, int], block_axis: str, wgs: int):
    """``plgpu.kernel`` over the grid (block, tile, kv head, batch) with ``wgs`` compute warpgroups
    and the memory one; ``block_axis`` names the grid's first axis (query or kv block)."""
    return plgpu.kernel(
        body,
        out_type=out_type,
        scratch_types=scratch,
        grid=grid,
        grid_names=(block_axis, "tile", "h", "b"),
        num_threads=wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )


def _drain(free_a, free_b, num_steps, steps: int) -> None:
    """Memory warpgroup: observe the consumers' releases of the last ``steps`` ring slots.

    Nothing is refilled after them, but every phase of a barrier should be observed by the
    thread that waits on it before the barrier is freed (GPU interpret mode enforces it;
    on the GPU it only holds the memory warpgroup until the compute warpgroups finish).
    """
    for i in range(steps):
        step = num_steps - steps + i
        if isinstance(step, int):
            if step >= 0:
                plgpu.barrier_wait(free_a.at[step % steps])
                plgpu.barrier_wait(free_b.at[step % steps])
            continue

        @pl.when(step >= 0)
        def _():
            slot = lax.rem(step, jnp.int32(steps))
            plgpu.barrier_wait(free_a.at[slot])
            plgpu.barrier_wait(free_b.at[slot])


class _KvRing(NamedTuple):
    """The ``steps``-slot TMA ring of streamed kv blocks: K and V tiles, their arrival barriers
    (memory warpgroup -> compute) and their release barriers (compute -> memory)."""

    k: Any
    v: Any
    k_bar: Any
    v_bar: Any
    k_free: Any
    v_free: Any


def _stream_kv_blocks(idx_ref, k_ref, v_ref, ring: _KvRing, *, bi, h, qb, block_size: int, steps: int,
                      num_blocks: int) -> None:
    """Memory warpgroup of the kernels that stream kv blocks (forward, dq, fused forward).

    Copies K and V of blocks ``idx_ref[bi, h, qb, 0..num_blocks)`` through the ``steps``-slot
    TMA ring: block j goes to slot j % steps once the consumers released that slot's K
    (``k_free``) and V (``v_free``).
    """

    def issue(j, slot, wait_free):
        rows = pl.ds(idx_ref[bi, h, qb, j] * block_size, block_size)
        if wait_free:
            plgpu.barrier_wait(ring.k_free.at[slot])
        plgpu.copy_gmem_to_smem(k_ref.at[bi, rows, h], ring.k.at[slot], ring.k_bar.at[slot])
        if wait_free:
            plgpu.barrier_wait(ring.v_free.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[bi, rows, h], ring.v.at[slot], ring.v_bar.at[slot])

    for i in range(steps):
        issue(i, i, wait_free=False)

    @pl.loop(steps, num_blocks)
    def _(j):
        issue(j, lax.rem(j, jnp.int32(steps)), wait_free=True)

    _drain(ring.k_free, ring.v_free, num_blocks, steps)


def _rendezvous(turn) -> None:
    """Both compute warpgroups reach this point before either goes on (``turn`` counts 2 arrivals)."""
    plgpu.barrier_arrive(turn)
    plgpu.barrier_wait(turn)


def _taking_turns(turn, wg, kv_loop: Callable[[], T]) -> T:
    """Run a compute warpgroup's ``kv_loop``, whose steps are ``_softmax_step(turn=turn)``, with
    warpgroup 1 half a step behind warpgroup 0, so they alternate on the tensor cores.

    Every step passes ``turn`` twice (after issuing QK^T; between the end of its softmax and
    its PV wgmma). Warpgroup 1 passes it once before its loop, warpgroup 0 once after, so
    warpgroup 1 issues its QK^T only once warpgroup 0 has issued its own, and each issues its
    PV only once the other has issued its next QK^T. ``turn`` None: no ordering.
    """
    if turn is None:
        return kv_loop()
    pl.when(wg == 1)(functools.partial(_rendezvous, turn))
    out = kv_loop()
    pl.when(wg == 0)(functools.partial(_rendezvous, turn))
    return out


def _softmax_state(head_dim: int):
    """A fresh float32 online-softmax state (acc, running max m in log2 units, row sum l)."""
    return (plgpu.layout_cast(jnp.full((BLOCK_Q, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA),
            plgpu.layout_cast(jnp.full((BLOCK_Q,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1)),
            plgpu.layout_cast(jnp.full((BLOCK_Q,), 0.0, jnp.float32), plgpu.Layout.WGMMA.reduce(1)))


def _softmax_update(s, m, l, scale_log2: float):
    """Block scores ``s`` into the online softmax state (m, l): ``(p, m_new, alpha, l_new)``,
    alpha rescaling what was accumulated under the old max."""
    # Scores in log2 units: one FMA per element inside exp2.
    m_new = jnp.maximum(m, s.max(axis=1) * scale_log2)
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s * scale_log2 - _row_bcast(m_new, s.shape))
    l = l * alpha + p.sum(axis=1)
    return p, m_new, alpha, l


def _scores(q_tile, ring: _KvRing, slot, block_size: int, while_running: Callable[[], None] | None = None):
    """S = Q K^T against the kv block in ring ``slot``: waits for its K, releases it once read.
    ``while_running`` as in ``_matmul``."""
    plgpu.barrier_wait(ring.k_bar.at[slot])
    s = _matmul(q_tile, ring.k.at[slot].T, (BLOCK_Q, block_size), while_running=while_running)
    plgpu.barrier_arrive(ring.k_free.at[slot])
    return s


def _softmax_step(q_tile, p_tile, ring: _KvRing, *, steps: int, block_size: int, head_dim: int, scale_log2: float,
                  dtype, turn=None):
    """``step(j, (acc, m, l))``: one streamed kv block (ring slot j % steps) of the online softmax.

    ``turn``: the ping-pong barrier of ``_taking_turns``, or None.
    """
    qk_issued = None if turn is None else functools.partial(_rendezvous, turn)

    def step(j, carry):
        acc, m, l = carry
        slot = lax.rem(j, jnp.int32(steps))
        s = _scores(q_tile, ring, slot, block_size, while_running=qk_issued)
        p, m_new, alpha, l = _softmax_update(s, m, l, scale_log2)
        p_tile[...] = p.astype(dtype)
        plgpu.commit_smem()
        if turn is not None:
            plgpu.barrier_arrive(turn)  # softmax done: the other warpgroup may issue its PV
        plgpu.barrier_wait(ring.v_bar.at[slot])
        if turn is not None:
            plgpu.barrier_wait(turn)  # the other warpgroup has issued its next QK^T
        pv = _matmul(p_tile, ring.v.at[slot], (BLOCK_Q, head_dim))
        plgpu.barrier_arrive(ring.v_free.at[slot])
        acc = acc * _row_bcast(alpha, acc.shape) + pv
        return acc, m_new, l

    return step


def _overlapped_softmax_loop(q_tile, p_pair, ring: _KvRing, *, steps: int, block_size: int, head_dim: int,
                             scale_log2: float, dtype):
    """``loop(start, stop) -> (acc, m, l)``: the online softmax over kv blocks start..stop-1
    (ring slot j % steps), each block's softmax running under the tensor cores' work on its
    neighbours (``SelectionConfig.intra_warpgroup_overlap``).

    Step j issues block j+1's QK^T, then block j's PV, waits for the QK^T only (wgmma groups
    complete in order), computes block j+1's softmax while PV_j runs, then waits for PV_j.
    P alternates between the two tiles of ``p_pair``: PV_j reads block j's while block j+1's
    is written. Before the loop block ``start``'s scores are waited for; after it, the last PV.
    """

    def p_tile(j):
        return p_pair.at[lax.rem(j, jnp.int32(2))]

    def slot(j):
        return lax.rem(j, jnp.int32(steps))

    def step(j, carry):
        acc, m, l = carry
        this, nxt = slot(j), slot(j + 1)

        def softmax(s):  # block j+1's, while PV_j runs
            plgpu.barrier_arrive(ring.k_free.at[nxt])
            p, m_new, alpha, l_new = _softmax_update(s, m, l, scale_log2)
            p_tile(j + 1)[...] = p.astype(dtype)
            plgpu.commit_smem()
            return m_new, alpha, l_new

        plgpu.barrier_wait(ring.k_bar.at[nxt])
        (m_new, alpha, l_new), pv = _matmul_pair(
            (q_tile, ring.k.at[nxt].T, (BLOCK_Q, block_size)), (p_tile(j), ring.v.at[this], (BLOCK_Q, head_dim)),
            softmax, before_second=lambda: plgpu.barrier_wait(ring.v_bar.at[this]))
        plgpu.barrier_arrive(ring.v_free.at[this])
        return (acc + pv) * _row_bcast(alpha, acc.shape), m_new, l_new

    def loop(start, stop):
        acc, m, l = _softmax_state(head_dim)
        s = _scores(q_tile, ring, slot(start), block_size)
        p, m, _, l = _softmax_update(s, m, l, scale_log2)  # acc is zero: nothing to rescale
        p_tile(start)[...] = p.astype(dtype)
        plgpu.commit_smem()
        acc, m, l = lax.fori_loop(start, stop - 1, step, (acc, m, l))
        last = slot(stop - 1)
        plgpu.barrier_wait(ring.v_bar.at[last])
        acc = acc + _matmul(p_tile(stop - 1), ring.v.at[last], (BLOCK_Q, head_dim))
        plgpu.barrier_arrive(ring.v_free.at[last])
        return acc, m, l

    return loop


def _softmax_loop(q_tile, p_tiles, ring: _KvRing, *, config: SelectionConfig, turn, steps: int, block_size: int,
                  head_dim: int, scale_log2: float, dtype) -> Callable[..., tuple]:
    """``loop(start, stop) -> (acc, m, l)``: a compute warpgroup's online softmax over the streamed
    kv blocks start..stop-1, on the schedule ``config`` asks for. ``p_tiles``: the warpgroup's P
    tile, or its two (``_p_scratch``); ``turn``: the ping-pong barrier, or None."""
    kw = dict(steps=steps, block_size=block_size, head_dim=head_dim, scale_log2=scale_log2, dtype=dtype)
    if config.intra_warpgroup_overlap:
        return _overlapped_softmax_loop(q_tile, p_tiles, ring, **kw)
    step = _softmax_step(q_tile, p_tiles, ring, turn=turn, **kw)
    return lambda start, stop: lax.fori_loop(start, stop, step, _softmax_state(head_dim))


def _p_scratch(wgs: int, block_size: int, dtype, config: SelectionConfig):
    """The forward kernels' SMEM for P, staged for the PV wgmma: one (64, block_size) tile per
    compute warpgroup, two with the intra-warpgroup overlap (PV_j reads one, P_{j+1} is written)."""
    tiles = (2,) if config.intra_warpgroup_overlap else ()
    return plgpu.SMEM((wgs, *tiles, BLOCK_Q, block_size), dtype, transforms=wgmma_operand_transforms())


# --------------------------------------------------------------------------- forward


def selection_forward(q, k, v, indices, *, block_size: int, config: SelectionConfig = DEFAULT_CONFIG):
    """Forward of the selected branch: ``(o float32 (B,N,Hq,d), lse float32 (B,Hq,N))``."""
    b, n, hq, d = q.shape
    dtype = q.dtype
    grid = _QueryBlockGrid.of(q, k, indices, block_size, config)
    bs, top_k, wgs, steps = block_size, grid.num_blocks, grid.wgs, grid.steps
    scale_log2 = d**-0.5 * LOG2E

    pingpong = config.pingpong and wgs == 2

    def mosaic_selection_fwd(idx_ref, q_ref, k_ref, v_ref, o_ref, lse_ref,
               q_smem, p_smem, o_smem, lse_smem, k_smem, v_smem,
               q_bar, k_bar, v_bar, k_free, v_free, *pingpong_bar):
        turn = pingpong_bar[0] if pingpong_bar else None  # the ping-pong barrier, if allocated
        ring = _KvRing(k_smem, v_smem, k_bar, v_bar, k_free, v_free)
        bi, h, qb, wg = _cta_coords("qb")

        def compute():
            tok, head = grid.query_tile(qb, h, wg)
            q_tile, p_tile = q_smem.at[wg], p_smem.at[wg]
            plgpu.copy_gmem_to_smem(q_ref.at[bi, pl.ds(tok, BLOCK_Q), head], q_tile, q_bar.at[wg])
            plgpu.barrier_wait(q_bar.at[wg])

            loop = _softmax_loop(q_tile, p_tile, ring, config=config, turn=turn, steps=steps, block_size=bs,
                                 head_dim=d, scale_log2=scale_log2, dtype=dtype)
            acc, m, l = _taking_turns(turn, wg, lambda: loop(0, top_k))
            o_smem.at[wg][...] = acc / _row_bcast(l, acc.shape)
            lse_smem.at[wg][...] = (m + jnp.log2(l)) * LN2
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem.at[wg], o_ref.at[bi, pl.ds(tok, BLOCK_Q), head])
            plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[bi, head, pl.ds(tok, BLOCK_Q)])
            plgpu.wait_smem_to_gmem(0)

        def memory():
            _stream_kv_blocks(idx_ref, k_ref, v_ref, ring, bi=bi, h=h, qb=qb, block_size=bs, steps=steps,
                              num_blocks=top_k)

        warp_specialized(wg, wgs, compute, memory)

    t16 = wgmma_operand_transforms()
    scratch = (
        plgpu.SMEM((wgs, BLOCK_Q, d), dtype, transforms=t16),  # q tiles
        _p_scratch(wgs, bs, dtype, config),  # P staged for the PV wgmma
        plgpu.SMEM((wgs, BLOCK_Q, d), jnp.float32),  # o tiles
        plgpu.SMEM((wgs, BLOCK_Q), jnp.float32),  # lse tiles
        plgpu.SMEM((steps, bs, d), dtype, transforms=t16),  # k ring
        plgpu.SMEM((steps, bs, d), dtype, transforms=t16),  # v ring
        plgpu.Barrier(num_barriers=wgs),
        plgpu.Barrier(num_barriers=steps),
        plgpu.Barrier(num_barriers=steps),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
    ) + ((plgpu.Barrier(num_arrivals=wgs),) if pingpong else ())
    out_type = (jax.ShapeDtypeStruct((b, n, hq, d), jnp.float32), jax.ShapeDtypeStruct((b, hq, n), jnp.float32))
    return _launch(mosaic_selection_fwd, out_type=out_type, scratch=scratch, grid=grid.shape, block_axis="qb",
                   wgs=wgs)(indices, q, k, v)


# --------------------------------------------------------------------------- backward


def invert_selection(indices: jax.Array, num_kv_blocks: int):
    """For each kv block, the query blocks that selected it, on device and deterministic.

    ``indices`` (B, Hk, nb, top_k) -> ``(inv_qb, offsets)``: ``inv_qb`` (B, Hk, nb*top_k)
    lists query blocks grouped by the kv block they selected (a stable sort, so within a kv
    block in increasing query-block order) and ``offsets`` (B, Hk, num_kv_blocks + 1) are
    the group boundaries. Selections are duplicate-free per query block, so each query
    block appears at most once per kv block.
    """
    b, hk, nbq, top_k = indices.shape
    flat = indices.reshape(b, hk, nbq * top_k)
    order = jnp.argsort(flat, axis=-1, stable=True)
    inv_qb = (order // top_k).astype(jnp.int32)
    sorted_kb = jnp.take_along_axis(flat, order, axis=-1)
    bounds = jnp.arange(num_kv_blocks + 1, dtype=flat.dtype)
    offsets = jax.vmap(jax.vmap(lambda row: jnp.searchsorted(row, bounds, side="left")))(sorted_kb)
    return inv_qb, offsets.astype(jnp.int32)


def selection_backward_dq(q, k, v, do, lse, delta, indices, *, block_size: int,
                          config: SelectionConfig = DEFAULT_CONFIG):
    """dq (float32, B,N,Hq,d) of the selected branch: ``dq = scale * dS @ K`` per tile.

    ``do`` has q's dtype; ``lse`` and ``delta = rowsum(do * o)`` are (B, Hq, N) float32.
    """
    b, n, hq, d = q.shape
    dtype = q.dtype
    grid = _QueryBlockGrid.of(q, k, indices, block_size, config)
    bs, top_k, wgs, steps = block_size, grid.num_blocks, grid.wgs, grid.steps
    scale = d**-0.5

    def mosaic_selection_bwd_dq(idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref,
               q_smem, do_smem, ds_smem, dq_smem, lse_smem, delta_smem, k_smem, v_smem,
               in_bar, k_bar, v_bar, k_free, v_free):
        bi, h, qb, wg = _cta_coords("qb")

        def compute():
            tok, head = grid.query_tile(qb, h, wg)
            rows = pl.ds(tok, BLOCK_Q)
            q_tile, do_tile, ds_tile = q_smem.at[wg], do_smem.at[wg], ds_smem.at[wg]
            plgpu.copy_gmem_to_smem(q_ref.at[bi, rows, head], q_tile, in_bar.at[wg, 0])
            plgpu.copy_gmem_to_smem(do_ref.at[bi, rows, head], do_tile, in_bar.at[wg, 1])
            plgpu.copy_gmem_to_smem(lse_ref.at[bi, head, rows], lse_smem.at[wg], in_bar.at[wg, 2])
            plgpu.copy_gmem_to_smem(delta_ref.at[bi, head, rows], delta_smem.at[wg], in_bar.at[wg, 3])
            for i in range(4):
                plgpu.barrier_wait(in_bar.at[wg, i])
            lse = plgpu.load(lse_smem.at[wg], layout=plgpu.Layout.WGMMA.reduce(1)) * LOG2E
            delta = plgpu.load(delta_smem.at[wg], layout=plgpu.Layout.WGMMA.reduce(1))
            dq0 = plgpu.layout_cast(jnp.full((BLOCK_Q, d), 0.0, jnp.float32), plgpu.Layout.WGMMA)

            def probabilities(s):
                return jnp.exp2(s * (scale * LOG2E) - _row_bcast(lse, s.shape))

            def step(j, dq):
                slot = lax.rem(j, jnp.int32(steps))
                plgpu.barrier_wait(k_bar.at[slot])
                if config.intra_warpgroup_overlap:  # P's exponentials under the dP wgmma
                    p, dp = _matmul_pair((q_tile, k_smem.at[slot].T, (BLOCK_Q, bs)),
                                         (do_tile, v_smem.at[slot].T, (BLOCK_Q, bs)), probabilities,
                                         before_second=lambda: plgpu.barrier_wait(v_bar.at[slot]))
                else:
                    p = probabilities(_matmul(q_tile, k_smem.at[slot].T, (BLOCK_Q, bs)))
                    plgpu.barrier_wait(v_bar.at[slot])
                    dp = _matmul(do_tile, v_smem.at[slot].T, (BLOCK_Q, bs))
                plgpu.barrier_arrive(v_free.at[slot])
                ds_tile[...] = (p * (dp - _row_bcast(delta, dp.shape))).astype(dtype)
                plgpu.commit_smem()
                dq = dq + _matmul(ds_tile, k_smem.at[slot], (BLOCK_Q, d))
                plgpu.barrier_arrive(k_free.at[slot])
                return dq

            dq = lax.fori_loop(0, top_k, step, dq0)
            dq_smem.at[wg][...] = dq * scale
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(dq_smem.at[wg], dq_ref.at[bi, rows, head])
            plgpu.wait_smem_to_gmem(0)

        def memory():
            ring = _KvRing(k_smem, v_smem, k_bar, v_bar, k_free, v_free)
            _stream_kv_blocks(idx_ref, k_ref, v_ref, ring, bi=bi, h=h, qb=qb, block_size=bs, steps=steps,
                              num_blocks=top_k)

        warp_specialized(wg, wgs, compute, memory)

    t16 = wgmma_operand_transforms()
    scratch = (
        plgpu.SMEM((wgs, BLOCK_Q, d), dtype, transforms=t16),  # q
        plgpu.SMEM((wgs, BLOCK_Q, d), dtype, transforms=t16),  # do
        plgpu.SMEM((wgs, BLOCK_Q, bs), dtype, transforms=t16),  # dS staged for dq wgmma
        plgpu.SMEM((wgs, BLOCK_Q, d), jnp.float32),  # dq out
        plgpu.SMEM((wgs, BLOCK_Q), jnp.float32),  # lse
        plgpu.SMEM((wgs, BLOCK_Q), jnp.float32),  # delta
        plgpu.SMEM((steps, bs, d), dtype, transforms=t16),  # k ring
        plgpu.SMEM((steps, bs, d), dtype, transforms=t16),  # v ring
        plgpu.Barrier(num_barriers=(wgs, 4)),
        plgpu.Barrier(num_barriers=steps),
        plgpu.Barrier(num_barriers=steps),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
    )
    dq_type = jax.ShapeDtypeStruct((b, n, hq, d), jnp.float32)
    return _launch(mosaic_selection_bwd_dq, out_type=dq_type, scratch=scratch, grid=grid.shape, block_axis="qb",
                   wgs=wgs)(indices, q, k, v, do, lse, delta)


def selection_backward_dkv(q, k, v, do, lse, delta, indices, *, block_size: int,
                           config: SelectionConfig = DEFAULT_CONFIG):
    """dk, dv (float32, B,N,Hk,d) of the selected branch, scattered through the selection.

    One CTA per (64*wgs kv rows of a kv block, kv head, batch) walks the (query block,
    query head) pairs whose selection contains its block, in the fixed order of
    ``invert_selection``; per pair: ``dV += P^T dO``, ``dK += scale * dS^T Q``.
    """
    b, n, hq, d = q.shape
    hk = k.shape[2]
    g = hq // hk
    bs = block_size
    nb = n // bs
    wgs = config.compute_wgs_for(bs)
    kv_tiles = bs // BLOCK_Q // wgs
    steps = config.max_concurrent_steps
    scale = d**-0.5
    dtype = q.dtype
    inv_qb, offsets = invert_selection(indices, nb)

    def mosaic_selection_bwd_dkv(inv_ref, off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref,
               k_smem, v_smem, st_smem, dk_smem, dv_smem, q_smem, do_smem, lse_smem, delta_smem,
               kv_bar, q_bar, do_bar, q_free, do_free):
        bi, h, kb, wg = _cta_coords("kb")
        start = off_ref[bi, h, kb]
        total = (off_ref[bi, h, kb + 1] - start) * g  # pipeline steps: (query block, head) pairs

        def compute():
            rows = pl.ds(kb * bs + (lax.axis_index("tile") * wgs + wg) * BLOCK_Q, BLOCK_Q)
            k_tile, v_tile, st_tile = k_smem.at[wg], v_smem.at[wg], st_smem.at[wg]
            plgpu.copy_gmem_to_smem(k_ref.at[bi, rows, h], k_tile, kv_bar.at[wg, 0])
            plgpu.copy_gmem_to_smem(v_ref.at[bi, rows, h], v_tile, kv_bar.at[wg, 1])
            plgpu.barrier_wait(kv_bar.at[wg, 0])
            plgpu.barrier_wait(kv_bar.at[wg, 1])
            zero = plgpu.layout_cast(jnp.full((BLOCK_Q, d), 0.0, jnp.float32), plgpu.Layout.WGMMA)

            def step(j, carry):
                dk, dv = carry
                slot = lax.rem(j, jnp.int32(steps))
                plgpu.barrier_wait(q_bar.at[slot])
                st = _matmul(k_tile, q_smem.at[slot].T, (BLOCK_Q, bs))  # S^T: kv rows x q cols
                lse = plgpu.load(lse_smem.at[slot], layout=plgpu.Layout.WGMMA.reduce(0)) * LOG2E
                pt = jnp.exp2(st * (scale * LOG2E) - lax.broadcast_in_dim(lse, st.shape, [1]))
                st_tile[...] = pt.astype(dtype)
                plgpu.commit_smem()
                plgpu.barrier_wait(do_bar.at[slot])
                dv = dv + _matmul(st_tile, do_smem.at[slot], (BLOCK_Q, d))
                dpt = _matmul(v_tile, do_smem.at[slot].T, (BLOCK_Q, bs))
                delta = plgpu.load(delta_smem.at[slot], layout=plgpu.Layout.WGMMA.reduce(0))
                plgpu.barrier_arrive(do_free.at[slot])
                st_tile[...] = (pt * (dpt - lax.broadcast_in_dim(delta, dpt.shape, [1]))).astype(dtype)
                plgpu.commit_smem()
                dk = dk + _matmul(st_tile, q_smem.at[slot], (BLOCK_Q, d))
                plgpu.barrier_arrive(q_free.at[slot])
                return dk, dv

            dk, dv = lax.fori_loop(0, total, step, (zero, zero))
            dk_smem.at[wg][...] = dk * scale
            dv_smem.at[wg][...] = dv
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(dk_smem.at[wg], dk_ref.at[bi, rows, h])
            plgpu.copy_smem_to_gmem(dv_smem.at[wg], dv_ref.at[bi, rows, h])
            plgpu.wait_smem_to_gmem(0)

        def memory():
            def issue(j, slot, wait_free):
                qb = inv_ref[bi, h, start + lax.div(j, jnp.int32(g))]
                head = h * g + lax.rem(j, jnp.int32(g))
                rows = pl.ds(qb * bs, bs)
                if wait_free:
                    plgpu.barrier_wait(q_free.at[slot])
                plgpu.copy_gmem_to_smem(q_ref.at[bi, rows, head], q_smem.at[slot], q_bar.at[slot])
                plgpu.copy_gmem_to_smem(lse_ref.at[bi, head, rows], lse_smem.at[slot], q_bar.at[slot])
                if wait_free:
                    plgpu.barrier_wait(do_free.at[slot])
                plgpu.copy_gmem_to_smem(do_ref.at[bi, rows, head], do_smem.at[slot], do_bar.at[slot])
                plgpu.copy_gmem_to_smem(delta_ref.at[bi, head, rows], delta_smem.at[slot], do_bar.at[slot])

            for i in range(steps):
                pl.when(i < total)(lambda i=i: issue(jnp.int32(i), i, wait_free=False))

            @pl.loop(steps, jnp.maximum(total, steps))
            def _(j):
                issue(j, lax.rem(j, jnp.int32(steps)), wait_free=True)

            _drain(q_free, do_free, total, steps)

        warp_specialized(wg, wgs, compute, memory)

    t16 = wgmma_operand_transforms()
    scratch = (
        plgpu.SMEM((wgs, BLOCK_Q, d), dtype, transforms=t16),  # k rows of this CTA
        plgpu.SMEM((wgs, BLOCK_Q, d), dtype, transforms=t16),  # v rows
        plgpu.SMEM((wgs, BLOCK_Q, bs), dtype, transforms=t16),  # P^T then dS^T, staged
        plgpu.SMEM((wgs, BLOCK_Q, d), jnp.float32),  # dk out
        plgpu.SMEM((wgs, BLOCK_Q, d), jnp.float32),  # dv out
        plgpu.SMEM((steps, bs, d), dtype, transforms=t16),  # q ring
        plgpu.SMEM((steps, bs, d), dtype, transforms=t16),  # do ring
        plgpu.SMEM((steps, bs), jnp.float32),  # lse ring
        plgpu.SMEM((steps, bs), jnp.float32),  # delta ring
        plgpu.Barrier(num_barriers=(wgs, 2)),
        plgpu.Barrier(num_arrivals=2, num_barriers=steps),  # q + lse copies
        plgpu.Barrier(num_arrivals=2, num_barriers=steps),  # do + delta copies
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
    )
    kv_shape = jax.ShapeDtypeStruct((b, n, hk, d), jnp.float32)
    return _launch(mosaic_selection_bwd_dkv, out_type=(kv_shape, kv_shape), scratch=scratch,
                   grid=(nb, kv_tiles, hk, b), block_axis="kb", wgs=wgs)(inv_qb, offsets, q, k, v, do, lse, delta)


# --------------------------------------------------------------------------- custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def selected_attention(q, k, v, indices, block_size: int, config: SelectionConfig = DEFAULT_CONFIG):
    """Selected-branch attention (float32 output) with the kernels' custom VJP.

    Same contract as ``mosaic_jax.attention.reference.selected_attention``; ``indices``
    (B, Hk, N/block_size, top_k) int32, duplicate-free per row, receives no gradient.
    """
    o, _ = selection_forward(q, k, v, indices, block_size=block_size, config=config)
    return o


def _selected_fwd(q, k, v, indices, block_size, config):
    o, lse = selection_forward(q, k, v, indices, block_size=block_size, config=config)
    return o, (q, k, v, indices, o, lse)


def _selected_bwd(block_size, config, res, do):
    q, k, v, indices, o, lse = res
    delta = jnp.einsum("bnhd,bnhd->bhn", o, do.astype(jnp.float32))
    do = do.astype(q.dtype)
    dq = selection_backward_dq(q, k, v, do, lse, delta, indices, block_size=block_size, config=config)
    dk, dv = selection_backward_dkv(q, k, v, do, lse, delta, indices, block_size=block_size, config=config)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


selected_attention.defvjp(_selected_fwd, _selected_bwd)
