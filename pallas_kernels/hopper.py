"""What every Mosaic GPU (Hopper) kernel here shares: the SMEM layout of 16-bit wgmma operands,
and warp specialization.

All the kernels (the attention family and the cSwiGLU up-projection) run ``wgs`` compute
warpgroups and one memory warpgroup that only issues TMA copies into a ring of SMEM slots.
With two compute warpgroups, ``setmaxnreg`` moves registers from the memory warpgroup to the
compute ones, which hold the float32 accumulators.
"""

from __future__ import annotations

from collections.abc import Callable

from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu


def wgmma_operand_transforms() -> tuple:
    """SMEM layout of every 16-bit wgmma operand: (8, 64) tiles, 128-byte swizzle."""
    return (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def register_split(num_compute_wgs: int) -> tuple[int, int] | None:
    """setmaxnreg budgets (compute, memory) per thread for the warp-specialized CTA, or None
    (one compute warpgroup: the launch bound already leaves it enough)."""
    return (232, 40) if num_compute_wgs == 2 else None


def warp_specialized(wg, wgs: int, compute: Callable[[], None], memory: Callable[[], None]) -> None:
    """Run ``compute`` on warpgroups ``0..wgs-1`` and ``memory`` on warpgroup ``wgs``, with the
    register budgets of ``register_split``. ``wg`` is the kernel's warpgroup axis index."""
    regs = register_split(wgs)

    @pl.when(wg < wgs)
    def _compute():
        if regs:
            plgpu.set_max_registers(regs[0], action="increase")
        compute()

    @pl.when(wg == wgs)
    def _memory():
        if regs:
            plgpu.set_max_registers(regs[1], action="decrease")
        memory()
