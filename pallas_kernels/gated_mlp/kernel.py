"""The cSwiGLU up-projection with its gate applied in the epilogue, as a Mosaic GPU (Hopper) kernel.

``h = silu(x @ W1 + bias) * (x @ W3)`` where ``[W1 | W3] = w13`` (SPEC.md, cSwiGLU) and
``bias`` is the per-member noise bias. XLA computes it as a GEMM that writes ``x @ w13``
(N x 2*hidden) to memory and an elementwise pass that reads it back and writes ``h``; it
fuses the product into neither matmul (checked with the H100 compiler, forecast.md). Here each
CTA computes the same (rows, columns) tile of ``x @ W1`` and ``x @ W3`` into two float32
accumulators and applies the gate in registers, so only ``h`` (N x hidden) is written: at the
stage-1 shape that is 906 MB less memory traffic per member and block.

Structure (as the attention kernels): ``num_compute_wgs`` compute warpgroups of 64 rows each
share a TMA ring of ``max_concurrent_steps`` slots filled by one memory warpgroup; a slot holds
the rows' ``x`` tile and the two weight tiles of one K step. Grid (column tile, row tile,
batch), the first axis fastest: consecutive CTAs share one row tile of ``x`` and sweep the
columns, and ``w13`` (9 to 26 MB at the published levels) stays in the 50 MB L2.

Forward only: ``gated_up_projection`` runs it when not differentiated (inference, the
forecast) and the XLA composition under ``jax.grad``. ``mosaic_jax.cswiglu`` also calls it in
its custom VJP's forward rule, which runs undifferentiated, so the train step's forward uses
the kernel and its backward recomputes the products it needs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.hopper import warp_specialized, wgmma_operand_transforms

ROWS_PER_WG = 64  # the wgmma M tile
SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class GatedMlpConfig:
    """Tile sizes of the kernel: ``num_compute_wgs * 64`` rows by ``block_n`` columns per CTA,
    K in steps of ``block_k``, ``max_concurrent_steps`` K steps in flight."""

    block_n: int = 128
    block_k: int = 64
    num_compute_wgs: int = 2
    max_concurrent_steps: int = 3

    @property
    def block_m(self) -> int:
        return self.num_compute_wgs * ROWS_PER_WG


DEFAULT_CONFIG = GatedMlpConfig()


def check_shapes(x: jax.Array, w13: jax.Array, bias: jax.Array, config: GatedMlpConfig = DEFAULT_CONFIG) -> None:
    """Raise ValueError naming what the kernel cannot take."""
    if x.ndim != 3 or w13.ndim != 2 or bias.ndim != 2:
        raise ValueError(f"expected x (B, N, D), w13 (D, 2H), bias (B, H); got {x.shape}, {w13.shape}, {bias.shape}")
    b, n, d = x.shape
    if w13.shape[0] != d or w13.shape[1] % 2:
        raise ValueError(f"w13 {w13.shape} must be (D={d}, 2*hidden)")
    hidden = w13.shape[1] // 2
    if bias.shape != (b, hidden):
        raise ValueError(f"bias {bias.shape} must be (B={b}, hidden={hidden})")
    if x.dtype not in SUPPORTED_DTYPES or w13.dtype != x.dtype:
        raise ValueError(f"x and w13 must share a 16-bit dtype (bfloat16, float16); got {x.dtype}, {w13.dtype}")
    for name, size, tile in (("tokens", n, config.block_m), ("hidden", hidden, config.block_n),
                             ("dim", d, config.block_k)):
        if size % tile:
            raise ValueError(f"{name}={size} is not a multiple of the kernel's tile {tile}")


def gated_up_projection_forward(x: jax.Array, w13: jax.Array, bias: jax.Array,
                                config: GatedMlpConfig = DEFAULT_CONFIG) -> jax.Array:
    """``silu(x @ w13[:, :H] + bias[:, None]) * (x @ w13[:, H:])`` (B, N, H) in x's dtype, one kernel.

    x (B, N, D) and w13 (D, 2H) 16-bit, bias (B, H) float32; products accumulate in float32
    and the gate is applied before the one rounding to x's dtype.
    """
    check_shapes(x, w13, bias, config)
    b, n, d = x.shape
    hidden = w13.shape[1] // 2
    dtype = x.dtype
    bm, bn, bk, wgs = config.block_m, config.block_n, config.block_k, config.num_compute_wgs
    k_steps = d // bk
    steps = min(config.max_concurrent_steps, k_steps)
    # Release a ring slot one step late, once the wgmmas that read it have retired, so the
    # tensor cores never wait for their own previous step (needs a second slot to run into).
    delay_release = steps > 1
    transforms = wgmma_operand_transforms()

    def mosaic_gated_up_projection(x_ref, w_ref, bias_ref, h_ref,
                                   x_smem, w1_smem, w3_smem, h_smem, bias_smem,
                                   bias_bar, load_bar, free_bar):
        bi = lax.axis_index("b")
        col = lax.axis_index("n") * bn
        row = lax.axis_index("m") * bm
        wg = lax.axis_index("wg")

        def compute():
            plgpu.copy_gmem_to_smem(bias_ref.at[bi, pl.ds(col, bn)], bias_smem.at[wg], bias_bar.at[wg])
            rows = pl.ds(wg * ROWS_PER_WG, ROWS_PER_WG)

            def products(acc_a, acc_b):
                @pl.loop(0, k_steps)
                def _(j):
                    slot = lax.rem(j, jnp.int32(steps))
                    plgpu.barrier_wait(load_bar.at[slot])
                    plgpu.wgmma(acc_a, x_smem.at[slot, rows], w1_smem.at[slot])
                    plgpu.wgmma(acc_b, x_smem.at[slot, rows], w3_smem.at[slot])
                    if delay_release:
                        # keep this step's two products in flight; the previous step's are done
                        plgpu.wgmma_wait(2)

                        @pl.when(j > 0)
                        def _():
                            plgpu.barrier_arrive(free_bar.at[lax.rem(j + steps - 1, jnp.int32(steps))])
                    else:
                        plgpu.wgmma_wait(0)
                        plgpu.barrier_arrive(free_bar.at[slot])

                if delay_release:
                    plgpu.wgmma_wait(0)
                    plgpu.barrier_arrive(free_bar.at[(k_steps - 1) % steps])
                return acc_a[...], acc_b[...]

            acc = plgpu.ACC((ROWS_PER_WG, bn), jnp.float32)
            a, gate_in = pl.run_scoped(products, acc, acc)
            plgpu.barrier_wait(bias_bar.at[wg])
            bias_row = plgpu.load(bias_smem.at[wg], layout=plgpu.Layout.WGMMA.reduce(0))
            z = a + lax.broadcast_in_dim(bias_row, a.shape, [1])
            h_smem.at[wg][...] = (z / (1.0 + jnp.exp(-z)) * gate_in).astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(h_smem.at[wg], h_ref.at[bi, pl.ds(row + wg * ROWS_PER_WG, ROWS_PER_WG),
                                                              pl.ds(col, bn)])
            plgpu.wait_smem_to_gmem(0)

        def memory():
            def issue(j, slot):
                ks = pl.ds(j * bk, bk)
                plgpu.copy_gmem_to_smem(x_ref.at[bi, pl.ds(row, bm), ks], x_smem.at[slot], load_bar.at[slot])
                plgpu.copy_gmem_to_smem(w_ref.at[ks, pl.ds(col, bn)], w1_smem.at[slot], load_bar.at[slot])
                plgpu.copy_gmem_to_smem(w_ref.at[ks, pl.ds(hidden + col, bn)], w3_smem.at[slot], load_bar.at[slot])

            for i in range(steps):
                issue(i, i)

            @pl.loop(steps, k_steps)
            def _(j):
                slot = lax.rem(j, jnp.int32(steps))
                plgpu.barrier_wait(free_bar.at[slot])
                issue(j, slot)

            # observe the consumers' last releases before the barriers are freed
            for i in range(steps):
                step = k_steps - steps + i
                plgpu.barrier_wait(free_bar.at[step % steps])

        warp_specialized(wg, wgs, compute, memory)

    scratch = (
        plgpu.SMEM((steps, bm, bk), dtype, transforms=transforms),  # x ring
        plgpu.SMEM((steps, bk, bn), dtype, transforms=transforms),  # W1 ring
        plgpu.SMEM((steps, bk, bn), dtype, transforms=transforms),  # W3 ring
        plgpu.SMEM((wgs, ROWS_PER_WG, bn), dtype, transforms=transforms),  # h tiles
        plgpu.SMEM((wgs, bn), jnp.float32),  # bias columns
        plgpu.Barrier(num_barriers=wgs),
        plgpu.Barrier(num_arrivals=3, num_barriers=steps),  # x + W1 + W3 copies
        plgpu.Barrier(num_arrivals=wgs, num_barriers=steps),
    )
    return plgpu.kernel(
        mosaic_gated_up_projection,
        out_type=jax.ShapeDtypeStruct((b, n, hidden), dtype),
        scratch_types=scratch,
        grid=(hidden // bn, n // bm, b),
        grid_names=("n", "m", "b"),
        num_threads=wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )(x, w13, bias.astype(jnp.float32))


def launch_flops(operand_shapes: list[tuple[int, ...]]) -> float:
    """Matrix FLOPs of one launch, from its operands ``(x (B, N, D), w13 (D, 2H), ...)``: both products."""
    (b, n, d), (_, two_hidden) = operand_shapes[:2]
    return 2.0 * b * n * d * two_hidden


def gated_up_projection_reference(x: jax.Array, w13: jax.Array, bias: jax.Array) -> jax.Array:
    """The same product in XLA (float32 accumulation, then x's dtype): the kernel's oracle and
    its backward. Under ``jax.grad`` this is what is differentiated."""
    hidden = w13.shape[1] // 2
    ab = jnp.dot(x, w13, preferred_element_type=jnp.float32)
    z = ab[..., :hidden] + bias[:, None, :].astype(jnp.float32)
    return (jax.nn.silu(z) * ab[..., hidden:]).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gated_up_projection(x: jax.Array, w13: jax.Array, bias: jax.Array,
                        config: GatedMlpConfig = DEFAULT_CONFIG) -> jax.Array:
    """The kernel when not differentiated; under ``jax.grad`` the XLA composition's gradient."""
    return gated_up_projection_forward(x, w13, bias, config)


def _fwd(x, w13, bias, config):
    out, vjp = jax.vjp(gated_up_projection_reference, x, w13, bias)
    return out, vjp


def _bwd(config, vjp, cot):
    return vjp(cot)


gated_up_projection.defvjp(_fwd, _bwd)
