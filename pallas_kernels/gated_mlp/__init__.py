"""The cSwiGLU gate as Mosaic GPU (Hopper) kernels: forward and backward.

``gated_up_projection`` (kernel.py): the up-projection with its gate in the GEMM epilogue,
what ``mosaic_jax.modules.CSwiGLU`` runs with ``impl="pallas-fused"`` (inference, and the
train step's forward pass);
``gated_up_projection_reference`` is its XLA oracle. ``gate_backward`` (backward.py): the
gate's recomputed output and gradients in one pass, what ``mosaic_jax.cswiglu`` runs in the
training backward with ``impl="pallas"``; ``gate_backward_reference`` is its oracle.
"""

from pallas_kernels.gated_mlp.backward import (
    DEFAULT_BACKWARD_CONFIG,
    GateBackwardConfig,
    check_backward_shapes,
    gate_backward,
    gate_backward_reference,
)
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
    "DEFAULT_BACKWARD_CONFIG",
    "DEFAULT_CONFIG",
    "GateBackwardConfig",
    "GatedMlpConfig",
    "check_backward_shapes",
    "check_shapes",
    "gate_backward",
    "gate_backward_reference",
    "gated_up_projection",
    "gated_up_projection_forward",
    "gated_up_projection_reference",
    "launch_flops",
]
