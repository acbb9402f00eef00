"""The cSwiGLU up-projection with its gate in the GEMM epilogue, as a Mosaic GPU (Hopper) kernel.

``gated_up_projection`` is what ``mosaic_jax.modules.CSwiGLU`` calls with
``attention_impl="pallas-fused"`` (inference kernels); ``gated_up_projection_reference`` is its
XLA oracle and backward.
"""

from pallas_kernels.gated_mlp.kernel import (
    DEFAULT_CONFIG,
    GatedMlpConfig,
    check_shapes,
    gated_up_projection,
    gated_up_projection_forward,
    gated_up_projection_reference,
    launch_flops,
)

__all__ = [
    "DEFAULT_CONFIG",
    "GatedMlpConfig",
    "check_shapes",
    "gated_up_projection",
    "gated_up_projection_forward",
    "gated_up_projection_reference",
    "launch_flops",
]
