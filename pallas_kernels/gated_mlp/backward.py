"""The cSwiGLU gate's backward as one Mosaic GPU kernel: h, da, db and the noise bias's gradient.

For ``h = silu(a + bias) * b`` and the cotangent ``dh`` of h, the training step needs h again
(for ``dW2 = h^T dy``, under remat) and ``da``, ``db``, ``dbias = sum_tokens(da)``. Compiled
for the H100, autodiff's form reads and writes ten (tokens, hidden) activations for this in
three memory-bound fusions, and XLA fuses no hand-written rewrite better (train.md). Here each
CTA loads one (64, ``block_n``) tile of a, b and dh by TMA, computes in float32 registers,
writes h, da and db over the same SMEM tiles and stores them in place of a, b and dh (the
operands are passed as mutable refs): six passes, and no activation-sized buffer beyond the
three it was given. (With three fresh outputs the train step needed 7 GiB more device memory
at batch 6 than autodiff's form; in place, 2.5 GiB less. Under FSDP 8 XLA's latency-hiding
scheduler still spends more memory on overlap around it: train.md.) It also writes the
tile's column sums of da, which the caller sums over row tiles ((B, N/64, H) float32, 1/32 of
one activation pass), so the bias's gradient costs no pass of its own.

No intra-CTA pipeline: a CTA is one tile, and with ``block_n=64`` (168 registers per thread,
28 KB of SMEM, ptxas without spills at the published shapes) three CTAs per SM keep 72 KB of
loads in flight, over what Little's law asks of HBM3 (~25 KB per SM at ~1 us). A 128-wide tile
spills (255 registers): each thread then holds 64 float32 values per live array.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

ROWS = 64  # one warpgroup's WGMMA-layout tile
SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class GateBackwardConfig:
    """``block_n`` hidden columns per CTA (64 rows each)."""

    block_n: int = 64


DEFAULT_BACKWARD_CONFIG = GateBackwardConfig()


def check_backward_shapes(a: jax.Array, b: jax.Array, dh: jax.Array, bias: jax.Array,
                          config: GateBackwardConfig = DEFAULT_BACKWARD_CONFIG) -> None:
    """Raise ValueError naming what the kernel cannot take."""
    if a.ndim != 3 or b.shape != a.shape or dh.shape != a.shape:
        raise ValueError(f"a, b, dh must share one (B, N, hidden) shape; got {a.shape}, {b.shape}, {dh.shape}")
    batch, tokens, hidden = a.shape
    if bias.shape != (batch, hidden):
        raise ValueError(f"bias {bias.shape} must be (B={batch}, hidden={hidden})")
    if a.dtype not in SUPPORTED_DTYPES or b.dtype != a.dtype or dh.dtype != a.dtype:
        raise ValueError(f"a, b, dh must share a 16-bit dtype (bfloat16, float16); got {a.dtype}, {b.dtype}, {dh.dtype}")
    for name, size, tile in (("tokens", tokens, ROWS), ("hidden", hidden, config.block_n)):
        if size % tile:
            raise ValueError(f"{name}={size} is not a multiple of the kernel's tile {tile}")


def gate_backward(a: jax.Array, b: jax.Array, dh: jax.Array, bias: jax.Array,
                  config: GateBackwardConfig = DEFAULT_BACKWARD_CONFIG
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(h, da, db, dbias) of ``h = silu(a + bias) * b`` given ``dh``, one kernel.

    a, b, dh (B, N, H) 16-bit, bias (B, H) any float: h, da, db in a's dtype (computed in
    float32, rounded once), dbias (B, H) float32.
    """
    check_backward_shapes(a, b, dh, bias, config)
    batch, tokens, hidden = a.shape
    dtype, bn = a.dtype, config.block_n
    row_tiles = tokens // ROWS
    wgmma = plgpu.Layout.WGMMA

    def mosaic_gate_backward(a_ref, b_ref, dh_ref, bias_ref, dbias_ref,
                             a_smem, b_smem, dh_smem, bias_smem, dbias_smem, bias_bar, tile_bar):
        bi, row_tile = lax.axis_index("b"), lax.axis_index("m")
        rows, cols = pl.ds(row_tile * ROWS, ROWS), pl.ds(lax.axis_index("n") * bn, bn)
        plgpu.copy_gmem_to_smem(bias_ref.at[bi, cols], bias_smem, bias_bar)
        for ref, smem in ((a_ref, a_smem), (b_ref, b_smem), (dh_ref, dh_smem)):
            plgpu.copy_gmem_to_smem(ref.at[bi, rows, cols], smem, tile_bar)
        plgpu.barrier_wait(bias_bar)
        bias_row = plgpu.load(bias_smem, layout=wgmma.reduce(0))
        plgpu.barrier_wait(tile_bar)
        a = plgpu.load(a_smem, layout=wgmma).astype(jnp.float32)
        gate_in = plgpu.load(b_smem, layout=wgmma).astype(jnp.float32)
        dh = plgpu.load(dh_smem, layout=wgmma).astype(jnp.float32)
        z = a + lax.broadcast_in_dim(bias_row, a.shape, [1])
        sig = 1.0 / (1.0 + jnp.exp(-z))
        silu = z * sig
        da = dh * gate_in * sig * (1.0 + z * (1.0 - sig))
        a_smem[...] = (silu * gate_in).astype(dtype)  # each thread rewrites what it read: reuse the tiles
        b_smem[...] = da.astype(dtype)
        dh_smem[...] = (dh * silu).astype(dtype)
        dbias_smem[...] = jnp.sum(da, axis=0)
        plgpu.commit_smem()
        # h, da, db go where a, b, dh were: this CTA's tiles, which no other CTA reads
        for smem, ref in ((a_smem, a_ref), (b_smem, b_ref), (dh_smem, dh_ref)):
            plgpu.copy_smem_to_gmem(smem, ref.at[bi, rows, cols])
        plgpu.copy_smem_to_gmem(dbias_smem, dbias_ref.at[bi, row_tile, cols])
        plgpu.wait_smem_to_gmem(0)

    tile = plgpu.SMEM((ROWS, bn), dtype)
    in_place = [jax.new_ref(t) for t in (a, b, dh)]
    dbias_parts = plgpu.kernel(
        mosaic_gate_backward,
        out_type=jax.ShapeDtypeStruct((batch, row_tiles, hidden), jnp.float32),
        scratch_types=(tile, tile, tile, plgpu.SMEM((bn,), jnp.float32), plgpu.SMEM((bn,), jnp.float32),
                       plgpu.Barrier(), plgpu.Barrier(num_arrivals=3)),
        grid=(hidden // bn, row_tiles, batch),
        grid_names=("n", "m", "b"),
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )(*in_place, bias.astype(jnp.float32))
    h, da, db = (ref[...] for ref in in_place)
    return h, da, db, jnp.sum(dbias_parts, axis=1)


def gate_backward_reference(a: jax.Array, b: jax.Array, dh: jax.Array, bias: jax.Array
                            ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The kernel's outputs in XLA, the same float32 arithmetic: its oracle, and the stand-in
    ``gate_backward`` for ``mosaic_jax.cswiglu``'s tests on the CPU."""
    dtype = a.dtype
    a, b, dh = (t.astype(jnp.float32) for t in (a, b, dh))
    z = a + bias.astype(jnp.float32)[:, None, :]
    sig = jax.nn.sigmoid(z)
    silu = z * sig
    da = dh * b * sig * (1.0 + z * (1.0 - sig))
    return (silu * b).astype(dtype), da.astype(dtype), (dh * silu).astype(dtype), jnp.sum(da, axis=1)
