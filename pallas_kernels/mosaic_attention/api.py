"""Mosaic attention on Hopper: the public entry point of the Pallas kernels.

``mosaic_attention`` has the contract of ``mosaic_jax.attention.reference.mosaic_attention``
(float32 output, differentiable in q, k, v and gates) and runs

* local branch:      the selection kernel on the fixed local-block table (local_kernel.py);
* compressed branch: XLA (``reference.compressed_attention``): N/bs pooled tokens, about
                     1/(top_k*bs^2/N) of the selected branch's FLOPs -- 0.07% at stage 1;
* selection:         block scores and top-k in XLA on device (``reference.select_blocks``),
                     then the selection kernel (selection_kernel.py), which reads the
                     indices from device memory;
* gates:             applied in XLA (one fused elementwise pass); with
                     ``SelectionConfig(fuse_forward=True)`` an undifferentiated call runs the
                     local and selected branches as one kernel that also adds the compressed
                     branch's per-block rows, applies the three gates and writes ``out_dtype``
                     (fused_kernel.py).

Each kernel carries its own custom VJP; the composition is differentiated by JAX. For CPU
runs, trace under ``plgpu.force_gpu_interpret_mode()`` (the tests do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mosaic_jax.attention import reference
from pallas_kernels.mosaic_attention.config import DEFAULT_CONFIG, SelectionConfig, check_kernel_shapes
from pallas_kernels.mosaic_attention.fused_kernel import can_fuse, fused_attention
from pallas_kernels.mosaic_attention.local_kernel import local_attention
from pallas_kernels.mosaic_attention.selection_kernel import selected_attention


def mosaic_attention(q: jax.Array, k: jax.Array, v: jax.Array, gates: jax.Array, *, block_attn_size: int,
                     sparse_block_size: int, top_k: int, out_dtype=jnp.float32,
                     config: SelectionConfig = DEFAULT_CONFIG) -> jax.Array:
    """Gated sum of local, compressed and top-k selected block attention, in ``out_dtype``.

    q (B, N, Hq, d), k and v (B, N, Hk, d) in bfloat16 or float16 with RoPE applied; gates
    (B, N, Hq, 3) the softmaxed branch weights. The branches accumulate in float32 whatever
    ``out_dtype``. Raises ``UnsupportedShapeError`` (a ValueError) for shapes or dtypes the
    kernels cannot take.
    """
    check_kernel_shapes(q, k, v, sparse_block_size=sparse_block_size, top_k=top_k,
                        block_attn_size=block_attn_size)
    if gates.shape != (*q.shape[:3], 3):
        raise ValueError(f"gates must be {(*q.shape[:3], 3)}, got {gates.shape}")
    o_cmp = reference.compressed_block_attention(q, k, v, sparse_block_size)
    indices = reference.select_blocks(q, k, sparse_block_size, top_k)
    gates = gates.astype(jnp.float32)
    if config.fuse_forward and can_fuse(block_attn_size, sparse_block_size):
        return fused_attention(q, k, v, gates, indices, o_cmp, block_attn_size, sparse_block_size,
                               jnp.dtype(out_dtype), config)
    o_local = local_attention(q, k, v, block_attn_size, config)
    o_sel = selected_attention(q, k, v, indices, sparse_block_size, config)
    o_cmp = jnp.repeat(o_cmp, sparse_block_size, axis=1)
    return (gates[..., 0:1] * o_local + gates[..., 1:2] * o_cmp + gates[..., 2:3] * o_sel).astype(out_dtype)
