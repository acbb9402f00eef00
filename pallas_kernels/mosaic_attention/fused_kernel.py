"""The whole gated Mosaic attention forward in one kernel: ``g_l*o_local + g_c*o_cmp + g_s*o_sel``.

Where the local tile equals the sparse block (128 tokens at the published config), the local
and selected branches are both "query block attends over a list of kv blocks": its L/t local
tiles, then its top-k selected blocks. This kernel streams the concatenated list through one
TMA ring, keeps one online-softmax state per branch (the local steps first, then the selected
ones), adds the compressed branch (one pooled output row per query block and head, computed
in XLA over N/bs pooled tokens, broadcast over the block's rows here) and writes the gated sum
once, in the model's compute dtype. Against two branch-kernel calls it saves a launch, the
second load of each query tile, the float32 round trip of both branch outputs through memory,
and the XLA pass that gated, summed and cast them.

It has no backward of its own: ``fused_attention`` runs it when not differentiated
(inference, the forecast) and the two branch kernels with their custom VJPs under
``jax.grad`` (their outputs are the backward's residuals anyway). Same interpret-mode
constraints as selection_kernel.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.hopper import warp_specialized, wgmma_operand_transforms
from pallas_kernels.mosaic_attention.config import BLOCK_Q, DEFAULT_CONFIG, SelectionConfig, local_tile_size
from pallas_kernels.mosaic_attention.local_kernel import local_attention, local_indices
from pallas_kernels.mosaic_attention.selection_kernel import (
    LOG2E,
    _cta_coords,
    _KvRing,
    _launch,
    _p_scratch,
    _QueryBlockGrid,
    _row_bcast,
    _softmax_loop,
    _stream_kv_blocks,
    _taking_turns,
    selected_attention,
)


def can_fuse(block_attn_size: int, sparse_block_size: int) -> bool:
    """The fused kernel needs the local tile and the sparse block to be the same size."""
    return local_tile_size(block_attn_size) == sparse_block_size


def fused_forward(q, k, v, indices, gates, o_cmp, *, block_size: int, local_steps: int, out_dtype=jnp.float32,
                  config: SelectionConfig = DEFAULT_CONFIG) -> jax.Array:
    """``g_local * o_local + g_cmp * o_cmp + g_sel * o_sel`` (B, N, Hq, d) in ``out_dtype``, one kernel.

    ``indices`` (B, Hk, N/block_size, local_steps + top_k) int32: per query block its local
    kv blocks, then its selected ones. ``gates`` (B, Hq, 3, N) float32: the local, compressed
    and selected gates, head-major so a tile's 64 gates are one contiguous TMA copy.
    ``o_cmp`` (B, N/block_size, Hq, d) float32: the compressed branch's output, one row per
    query block (every token of a block receives its block's row).
    """
    b, n, hq, d = q.shape
    dtype = q.dtype
    grid = _QueryBlockGrid.of(q, k, indices, block_size, config)
    bs, total, wgs, steps = block_size, grid.num_blocks, grid.wgs, grid.steps
    scale_log2 = d**-0.5 * LOG2E

    pingpong = config.pingpong and wgs == 2

    def mosaic_local_selected_fwd(idx_ref, q_ref, k_ref, v_ref, gates_ref, cmp_ref, o_ref,
                                  q_smem, p_smem, o_smem, gates_smem, cmp_smem, k_smem, v_smem,
                                  q_bar, k_bar, v_bar, k_free, v_free, *pingpong_bar):
        turn = pingpong_bar[0] if pingpong_bar else None  # the ping-pong barrier, if allocated
        ring = _KvRing(k_smem, v_smem, k_bar, v_bar, k_free, v_free)
        bi, h, qb, wg = _cta_coords("qb")

        def compute():
            tok, head = grid.query_tile(qb, h, wg)
            rows = pl.ds(tok, BLOCK_Q)
            q_tile, p_tile = q_smem.at[wg], p_smem.at[wg]
            plgpu.copy_gmem_to_smem(q_ref.at[bi, rows, head], q_tile, q_bar.at[wg])
            for i in range(3):
                plgpu.copy_gmem_to_smem(gates_ref.at[bi, head, i, rows], gates_smem.at[wg, i], q_bar.at[wg])
            plgpu.copy_gmem_to_smem(cmp_ref.at[bi, qb, head], cmp_smem.at[wg], q_bar.at[wg])
            plgpu.barrier_wait(q_bar.at[wg])

            loop = _softmax_loop(q_tile, p_tile, ring, config=config, turn=turn, steps=steps, block_size=bs,
                                 head_dim=d, scale_log2=scale_log2, dtype=dtype)

            def kv_loops():  # the ring runs on across the two loops: block j always uses slot j % steps
                return loop(0, local_steps), loop(local_steps, total)

            (acc_local, _, l_local), (acc_sel, _, l_sel) = _taking_turns(turn, wg, kv_loops)
            g_local, g_cmp, g_sel = (plgpu.load(gates_smem.at[wg, i], layout=plgpu.Layout.WGMMA.reduce(1))
                                     for i in range(3))
            cmp_row = plgpu.load(cmp_smem.at[wg], layout=plgpu.Layout.WGMMA.reduce(0))
            out = (acc_local * _row_bcast(g_local / l_local, acc_local.shape)
                   + acc_sel * _row_bcast(g_sel / l_sel, acc_sel.shape)
                   + _row_bcast(g_cmp, acc_sel.shape) * lax.broadcast_in_dim(cmp_row, acc_sel.shape, [1]))
            o_smem.at[wg][...] = out.astype(out_dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem.at[wg], o_ref.at[bi, rows, head])
            plgpu.wait_smem_to_gmem(0)

        def memory():
            _stream_kv_blocks(idx_ref, k_ref, v_ref, ring, bi=bi, h=h, qb=qb, block_size=bs, steps=steps,
                              num_blocks=total)

        warp_specialized(wg, wgs, compute, memory)

    t16 = wgmma_operand_transforms()
    out_dtype = jnp.dtype(out_dtype)
    out_transforms = t16 if out_dtype.itemsize == 2 else ()
    scratch = (
        plgpu.SMEM((wgs, BLOCK_Q, d), dtype, transforms=t16),  # q tiles
        _p_scratch(wgs, bs, dtype, config),  # P staged for the PV wgmma
        plgpu.SMEM((wgs, BLOCK_Q, d), out_dtype, transforms=out_transforms),  # gated output tiles
        plgpu.SMEM((wgs, 3, BLOCK_Q), jnp.float32),  # the three gates of the tile's rows
        plgpu.SMEM((wgs, d), jnp.float32),  # the compressed branch's row of the tile's query block
        plgpu.SMEM((steps, bs, d), dtype, transforms=t16),  # k ring
        plgpu.SMEM((steps, bs, d), dtype, transforms=t16),  # v ring
        plgpu.Barrier(num_arrivals=5, num_barriers=wgs),  # q, 3 gates, compressed row
        plgpu.Barrier(num_barriers=steps),
        plgpu.Barrier(num_barriers=steps),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
    ) + ((plgpu.Barrier(num_arrivals=wgs),) if pingpong else ())
    out_type = jax.ShapeDtypeStruct((b, n, hq, d), out_dtype)
    return _launch(mosaic_local_selected_fwd, out_type=out_type, scratch=scratch, grid=grid.shape,
                   block_axis="qb", wgs=wgs)(indices, q, k, v, gates, o_cmp)


# --------------------------------------------------------------------------- with its VJP


def _gated_sum(q, k, v, gates, indices, o_cmp, block_attn_size, sparse_block_size, out_dtype, config):
    """The composition the fused kernel replaces: two branch kernels, gated and summed in XLA."""
    o_local = local_attention(q, k, v, block_attn_size, config)
    o_sel = selected_attention(q, k, v, indices, sparse_block_size, config)
    gates = gates.astype(jnp.float32)
    o_cmp = jnp.repeat(o_cmp, sparse_block_size, axis=1)
    return (gates[..., 0:1] * o_local + gates[..., 1:2] * o_cmp + gates[..., 2:3] * o_sel).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def fused_attention(q, k, v, gates, indices, o_cmp, block_attn_size: int, sparse_block_size: int,
                    out_dtype=jnp.float32, config: SelectionConfig = DEFAULT_CONFIG):
    """``gates[..., 0] * local + gates[..., 1] * compressed + gates[..., 2] * selected`` in ``out_dtype``:
    the fused kernel forward; under differentiation the two branch kernels, whose custom VJPs
    give the gradients (the compressed term is differentiated by JAX).

    ``gates`` (B, N, Hq, 3); ``indices`` (B, Hk, N/sparse_block_size, top_k) the selection;
    ``o_cmp`` (B, N/sparse_block_size, Hq, d) the compressed branch per query block
    (``reference.compressed_block_attention``). Requires ``can_fuse(block_attn_size, sparse_block_size)``.
    """
    b, n, hq, _ = q.shape
    table = jnp.concatenate([local_indices(b, k.shape[2], n, block_attn_size), indices.astype(jnp.int32)], axis=-1)
    gates_t = jnp.transpose(gates.astype(jnp.float32), (0, 2, 3, 1))  # (B, Hq, 3, N)
    return fused_forward(q, k, v, table, gates_t, o_cmp.astype(jnp.float32), block_size=sparse_block_size,
                         local_steps=block_attn_size // sparse_block_size, out_dtype=out_dtype, config=config)


def _fused_fwd(q, k, v, gates, indices, o_cmp, block_attn_size, sparse_block_size, out_dtype, config):
    out, vjp = jax.vjp(lambda q, k, v, g, c: _gated_sum(q, k, v, g, indices, c, block_attn_size, sparse_block_size,
                                                        out_dtype, config), q, k, v, gates, o_cmp)
    return out, (vjp, indices)


def _fused_bwd(block_attn_size, sparse_block_size, out_dtype, config, res, cot):
    vjp, indices = res
    dq, dk, dv, dgates, dcmp = vjp(cot)
    return dq, dk, dv, dgates, None, dcmp


fused_attention.defvjp(_fused_fwd, _fused_bwd)
