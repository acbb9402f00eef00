"""Mosaic attention as Pallas kernels on JAX's Mosaic GPU backend (Hopper: wgmma + TMA).

``mosaic_attention`` is what ``mosaic_jax.attention.api.mosaic_attention(impl="pallas")``
calls. The selection kernels (forward, dq, dk/dv) live in ``selection_kernel``; the local
branch reuses them on a fixed table (``local_kernel``); ``fused_kernel`` runs the whole gated
forward as one kernel; FLOP counts (per branch, per kernel launch) in ``flops``.
"""

from pallas_kernels.mosaic_attention.api import mosaic_attention
from pallas_kernels.mosaic_attention.config import (
    DEFAULT_CONFIG,
    SelectionConfig,
    UnsupportedShapeError,
    check_kernel_shapes,
)
from pallas_kernels.mosaic_attention.local_kernel import local_attention
from pallas_kernels.mosaic_attention.selection_kernel import selected_attention

__all__ = [
    "DEFAULT_CONFIG",
    "SelectionConfig",
    "UnsupportedShapeError",
    "check_kernel_shapes",
    "local_attention",
    "mosaic_attention",
    "selected_attention",
]
