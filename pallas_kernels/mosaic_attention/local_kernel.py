"""Local branch of Mosaic attention: full attention inside contiguous blocks.

The local branch is the selection kernel run on a fixed selection: with tiles of
``t = local_tile_size(block_attn_size)`` tokens, query tile ``qt`` attends over the
``block_attn_size / t`` kv tiles of its own local block,
``indices[b, h, qt, j] = (qt // (L/t)) * (L/t) + j``. The online softmax over those tiles
is exactly the full softmax over the block, and the backward (dq; dk/dv through the
inverse selection, where every kv tile is read by the L/t query tiles of its block) is the
selection kernel's, so one tested kernel family serves both branches. The table is a
function of static shapes (an iota), built on device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.mosaic_attention.config import DEFAULT_CONFIG, SelectionConfig, local_tile_size
from pallas_kernels.mosaic_attention.selection_kernel import selected_attention


def local_indices(batch: int, num_kv_heads: int, seq_len: int, block_attn_size: int) -> jax.Array:
    """(B, Hk, N/t, L/t) int32: the kv tiles of each query tile's own local block."""
    t = local_tile_size(block_attn_size)
    per_block = block_attn_size // t
    qt = jnp.arange(seq_len // t, dtype=jnp.int32)
    idx = (qt // per_block * per_block)[:, None] + jnp.arange(per_block, dtype=jnp.int32)[None, :]
    return jnp.broadcast_to(idx, (batch, num_kv_heads, *idx.shape))


def local_attention(q, k, v, block_attn_size: int, config: SelectionConfig = DEFAULT_CONFIG):
    """Same contract as ``reference.local_attention`` (float32 output), differentiable."""
    b, n, _, _ = q.shape
    idx = local_indices(b, k.shape[2], n, block_attn_size)
    return selected_attention(q, k, v, idx, local_tile_size(block_attn_size), config)
