"""Frozen block-size configuration and shape checks of the Mosaic attention kernels.

One compute warpgroup owns ``BLOCK_Q = 64`` query rows (one ``wgmma`` M tile). A kv
block of the selection is one TMA copy of ``sparse_block_size`` rows; the backward
dk/dv kernel gives each compute warpgroup 64 of those rows. Every check raises a
``ValueError`` naming the argument it cannot take.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp

BLOCK_Q = 64  # rows per compute warpgroup: the wgmma M tile on Hopper
SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Tuning knobs of the selection kernels (forward, dq, dk/dv).

    num_compute_wgs: compute warpgroups per CTA in the forward and dq kernels; they share
      each streamed kv block, so 2 halves the kv traffic per query row. Reduced to 1 when
      the G*sparse_block_size query rows of a (query block, kv head) are one 64-row tile.
    max_concurrent_steps: depth of the TMA ring of kv (forward, dq) or q/do (dk/dv) tiles.
    fuse_forward: when not differentiated, run the whole gated attention forward as one
      kernel (fused_kernel.py: local and selected streamed, compressed row added, gates
      applied) where the local tile equals the sparse block. Off until an H100 timing shows
      it faster than the two branch kernels.
    pingpong: in the forward kernels with two compute warpgroups, the warpgroups take turns
      on the tensor cores (FlashAttention-3's ping-pong): one's softmax runs while the
      other's wgmma do. At head_dim 64 a score's exp2 takes as long as its matrix products
      (flops.exp_to_matmul_time), so without this overlap the forward cannot pass 50% of
      the matmul peak. Off until an H100 timing shows it faster.
    intra_warpgroup_overlap: in the forward kernels, each compute warpgroup issues the next kv
      block's QK^T and this block's PV before its softmax, which then runs under them
      (FlashAttention-3's intra-warpgroup overlap); the other way to the same overlap, one that
      needs no second warpgroup and costs a second P tile in SMEM. In the dq kernel, P's
      exponentials run under the dP wgmma. Off until an H100 timing shows it faster; not
      combined with ``pingpong``.
    """

    num_compute_wgs: int = 2
    max_concurrent_steps: int = 2
    fuse_forward: bool = False
    pingpong: bool = False
    intra_warpgroup_overlap: bool = False

    def __post_init__(self):
        if self.num_compute_wgs not in (1, 2):
            raise ValueError(f"num_compute_wgs={self.num_compute_wgs} must be 1 or 2")
        if self.max_concurrent_steps < 1:
            raise ValueError(f"max_concurrent_steps={self.max_concurrent_steps} must be >= 1")
        if self.pingpong and self.intra_warpgroup_overlap:
            raise ValueError("pingpong and intra_warpgroup_overlap are two schedules of the forward kernels' "
                             "softmax; set one of them")

    def compute_wgs_for(self, rows: int) -> int:
        """Compute warpgroups per CTA for ``rows`` = G*sparse_block_size query rows."""
        tiles = rows // BLOCK_Q
        return self.num_compute_wgs if tiles % self.num_compute_wgs == 0 else 1


DEFAULT_CONFIG = SelectionConfig()


class AttentionShape(NamedTuple):
    """One attention call of the model: its sequence, heads and Mosaic block sizes."""

    name: str
    tokens: int
    q_heads: int
    kv_heads: int
    head_dim: int
    block_attn_size: int
    sparse_block_size: int
    top_k: int


# The published configuration's three attention stages (SPEC.md), batch 1 per member.
PUBLISHED_STAGES = (
    AttentionShape("stage 1 (nside 64)", 49_152, 12, 3, 64, 1024, 128, 24),
    AttentionShape("stage 2 (nside 32)", 12_288, 16, 4, 64, 1024, 128, 12),
    AttentionShape("bottleneck (nside 16)", 3_072, 20, 5, 64, 1024, 128, 4),
)


class UnsupportedShapeError(ValueError, NotImplementedError):
    """A shape or dtype the kernels cannot take.

    A ValueError for callers that forced the kernel; also a NotImplementedError so that a
    dispatcher trying implementations in order (tokamax style) can fall back on it.
    """


def local_tile_size(block_attn_size: int) -> int:
    """kv/query tile of the local branch: 128 rows where it divides the local block, else 64."""
    return 128 if block_attn_size % 128 == 0 else 64


def check_kernel_shapes(q, k, v, *, sparse_block_size: int, top_k: int,
                        block_attn_size: int | None = None) -> None:
    """Raise ValueError for the shapes and dtypes the Hopper kernels cannot take.

    The kernels need: bf16 or f16 q, k, v of one dtype (wgmma operands; float32 would run
    as tf32 on the tensor cores, so it is refused rather than silently less precise);
    head_dim a multiple of 64 up to 256 (128-byte swizzled SMEM rows); sparse_block_size a
    multiple of 64 up to 256 (one TMA box per kv block, 64-row wgmma tiles in dk/dv);
    block_attn_size (when given) a multiple of 64 dividing the sequence.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise UnsupportedShapeError(f"q, k, v must be (batch, tokens, heads, head_dim); got {q.shape}, {k.shape}, {v.shape}")
    b, n, hq, d = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, n) or k.shape[3] != d:
        raise UnsupportedShapeError(f"k {k.shape} and v {v.shape} must match q {q.shape} in batch, tokens and head_dim")
    hk = k.shape[2]
    if hq % hk:
        raise UnsupportedShapeError(f"num query heads {hq} is not divisible by num kv heads {hk}")
    if not (q.dtype == k.dtype == v.dtype):
        raise UnsupportedShapeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if jnp.dtype(q.dtype) not in SUPPORTED_DTYPES:
        raise UnsupportedShapeError(f"the Pallas kernels take bfloat16 or float16 inputs, got {q.dtype} "
                         "(use impl='xla' for float32)")
    if d % 64 or d > 256:
        raise UnsupportedShapeError(f"head_dim={d} must be a multiple of 64 and at most 256")
    if sparse_block_size % 64 or sparse_block_size > 256:
        raise UnsupportedShapeError(f"sparse_block_size={sparse_block_size} must be a multiple of 64 and at most 256")
    if n % sparse_block_size:
        raise UnsupportedShapeError(f"sparse_block_size={sparse_block_size} does not divide the sequence length {n}")
    if not 1 <= top_k <= n // sparse_block_size:
        raise UnsupportedShapeError(f"top_k={top_k} must be in [1, {n // sparse_block_size}] (number of sparse blocks)")
    if block_attn_size is not None:
        if block_attn_size % 64:
            raise UnsupportedShapeError(f"block_attn_size={block_attn_size} must be a multiple of 64")
        if n % block_attn_size:
            raise UnsupportedShapeError(
                f"block_attn_size={block_attn_size} does not divide the sequence length {n}")
