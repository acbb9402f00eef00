"""FLOP counts of the three Mosaic attention branches, as the branches are defined.

Counted as the matrix products of each branch's definition (2 FLOPs per multiply-add),
per batch element and query head, then times B*Hq (SPEC.md, "Mosaic attention"):

* local:      each of the N queries scores and mixes L = block_attn_size keys:
              ``QK^T`` 2*N*L*d + ``PV`` 2*N*L*d = 4*N*L*d.
* compressed: M = N/bs pooled queries against M pooled keys: 4*M*M*d (the mean-pooling
              and the repeat back to tokens are O(N*d) and not counted).
* selected:   each of the N queries scores and mixes top_k*bs keys: 4*N*top_k*bs*d.
              The block scores that choose the selection (M x M per kv head, contracted
              over d and the G strided query heads: 2*M*M*d per query head) are counted
              separately as ``selection_scoring``; mean-pooling and top-k are not counted.

Backward: 2.5x the forward matmul FLOPs (dq, dk, dv and the recomputed S: QK^T, dP=dO V^T,
dV=P^T dO, dQ=dS K, dK=dS^T Q -- 5 products against 2), the usual FlashAttention count.
Softmax exponentials are not counted as FLOPs (they run on the SFU, not the tensor cores);
``exp_to_matmul_time`` says what they cost beside the matrix products on Hopper.
"""

from __future__ import annotations

import dataclasses

BWD_FACTOR = 2.5


@dataclasses.dataclass(frozen=True)
class MosaicFlops:
    local: float
    compressed: float
    selected: float
    selection_scoring: float

    @property
    def forward(self) -> float:
        return self.local + self.compressed + self.selected + self.selection_scoring

    @property
    def forward_backward(self) -> float:
        """Forward plus backward; selection scoring has no backward (stop_gradient)."""
        branches = self.local + self.compressed + self.selected
        return self.forward + BWD_FACTOR * branches


def mosaic_flops(batch: int, seq_len: int, num_q_heads: int, head_dim: int, *, block_attn_size: int,
                 sparse_block_size: int, top_k: int) -> MosaicFlops:
    bh = batch * num_q_heads
    n, d = seq_len, head_dim
    m = seq_len // sparse_block_size
    return MosaicFlops(
        local=4.0 * bh * n * block_attn_size * d,
        compressed=4.0 * bh * m * m * d,
        selected=4.0 * bh * n * top_k * sparse_block_size * d,
        selection_scoring=2.0 * bh * m * m * d,
    )


def dense_flops(batch: int, seq_len: int, num_q_heads: int, head_dim: int) -> float:
    """Non-causal dense attention forward: 4*N^2*d per (batch, head)."""
    return 4.0 * batch * num_q_heads * seq_len * seq_len * head_dim


# Matrix products per (query row, streamed kv row) pair in each kernel of this package: the
# forward kernels QK^T and PV; dq recomputes QK^T and forms dP = dO V^T and dQ = dS K; dk/dv
# recomputes S^T and dP^T and forms dV and dK. The backward kernels' recomputation makes their
# hardware FLOPs 3.5x the forward's (the model-FLOP convention above counts 2.5x).
KERNEL_MATMULS = {
    "mosaic_selection_fwd": 2,
    "mosaic_local_selected_fwd": 2,
    "mosaic_selection_bwd_dq": 3,
    "mosaic_selection_bwd_dkv": 4,
}


def _matmuls_per_pair(kernel: str) -> int:
    if kernel not in KERNEL_MATMULS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(KERNEL_MATMULS)}")
    return KERNEL_MATMULS[kernel]


def kernel_launch_flops(kernel: str, operand_shapes: list[tuple[int, ...]]) -> float:
    """Matrix FLOPs one launch of ``kernel`` performs, from the shapes of its operands.

    Every kernel streams, for each query block of ``bs`` tokens and query head, ``K`` kv
    blocks of ``bs`` tokens (the local tiles, the selection, or both): ``2 * matmuls * B * N
    * Hq * d * bs * K``. The forward and dq kernels take ``(indices (B, Hk, N/bs, K), q (B,
    N, Hq, d), ...)``; dk/dv takes ``(inverse lists (B, Hk, N/bs * K), offsets (B, Hk, N/bs
    + 1), q, ...)``. Used to give a compiled program's Pallas custom calls their FLOPs
    (``mosaic_jax.roofline``), which HLO cannot see.
    """
    matmuls = _matmuls_per_pair(kernel)
    if kernel == "mosaic_selection_bwd_dkv":
        inverse, offsets, q = operand_shapes[:3]
        num_blocks = offsets[-1] - 1
        per_query_block = inverse[-1] // num_blocks
    else:
        indices, q = operand_shapes[:2]
        num_blocks, per_query_block = indices[-2], indices[-1]
    b, n, hq, d = q
    return 2.0 * matmuls * b * n * hq * d * (n // num_blocks) * per_query_block


# Hopper (sm_90) issue rates per SM per clock; their ratio does not depend on the clock.
# Dense bf16/f16 wgmma with float32 accumulation: 4096 FLOPs (989 TFLOP/s = 132 SMs x 1.83 GHz
# x 4096 on an H100 SXM). ex2.approx on the special-function units: 16 results (CUDA
# programming guide, arithmetic instruction throughput, compute capability 9.0).
TENSOR_FLOPS_PER_CLOCK = 4096
SFU_EXP2_PER_CLOCK = 16


def exp_to_matmul_time(kernel: str, head_dim: int) -> float:
    """Time of a kernel's softmax exponentials over the time of its matrix products, each at peak.

    Every kernel here takes one ``exp2`` per (query row, kv row) pair (the forward's P; dq
    and dk/dv recompute P from the LSE) against ``2 * KERNEL_MATMULS[kernel] * head_dim``
    matrix FLOPs. At head_dim 64 the forward's ratio is 1: its exponentials alone take as
    long as its tensor-core work, so unless they overlap the wgmma (another warpgroup's, or
    the next kv block's), the kernel cannot pass ``1 / (1 + ratio)`` = 50% of the matmul peak.
    """
    matmul_clocks = 2 * _matmuls_per_pair(kernel) * head_dim / TENSOR_FLOPS_PER_CLOCK
    return (1 / SFU_EXP2_PER_CLOCK) / matmul_clocks
