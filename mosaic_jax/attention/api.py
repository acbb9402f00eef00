"""The one entry point to Mosaic attention, dispatching to an implementation.

``impl="xla"`` is the pure-JAX reference (any backend, differentiable). ``impl="pallas"``
is the Mosaic GPU kernel in ``pallas_kernels`` (Hopper only); ``impl="pallas-fused"`` the
same with the whole gated forward as one kernel where the call is not differentiated
(``SelectionConfig.fuse_forward``; inference). The model then also fuses its cSwiGLU
up-projection with its gate (``modules.CSwiGLU``), in training's forward pass too.
``impl="auto"`` picks ``"pallas"`` on a Hopper GPU and the reference elsewhere; a forced
implementation is never silently replaced (the commands check it against the device first,
``require_kernel_device``).

A Pallas kernel is per-device code that XLA's SPMD partitioner cannot split: under a
sharded ``jax.jit`` it would receive the all-gathered batch on every device and compute
all of it. Given ``batch_sharding`` (the mesh and the axes that split the batch), the
kernel runs under ``jax.shard_map`` on each device's own sequences instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from mosaic_jax.attention import reference
from mosaic_jax.config import ATTENTION_IMPLS

Impl = Literal["auto", "xla", "pallas", "pallas-fused"]  # ATTENTION_IMPLS


class BatchSharding(NamedTuple):
    """How the batch (leading) dimension of the attention inputs is split over a mesh."""

    mesh: Mesh
    axes: tuple[str, ...]

    @property
    def num_shards(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.axes)


def validate_shapes(q: jax.Array, k: jax.Array, v: jax.Array, gates: jax.Array, *, block_attn_size: int,
                    sparse_block_size: int, top_k: int) -> None:
    """Raise ValueError naming the first argument whose shape cannot be taken."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be (batch, tokens, heads, head_dim); got {q.shape}, {k.shape}, {v.shape}")
    b, n, hq, d = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, n) or k.shape[3] != d:
        raise ValueError(f"k {k.shape} and v {v.shape} must match q {q.shape} in batch, tokens and head_dim")
    hk = k.shape[2]
    if hq % hk:
        raise ValueError(f"num query heads {hq} is not divisible by num kv heads {hk}")
    if gates.shape != (b, n, hq, 3):
        raise ValueError(f"gates must be {(b, n, hq, 3)}, got {gates.shape}")
    if n % block_attn_size:
        raise ValueError(f"block_attn_size={block_attn_size} does not divide the sequence length {n}")
    if n % sparse_block_size:
        raise ValueError(f"sparse_block_size={sparse_block_size} does not divide the sequence length {n}")
    if not 1 <= top_k <= n // sparse_block_size:
        raise ValueError(f"top_k={top_k} must be in [1, {n // sparse_block_size}] (number of sparse blocks)")


def kernel_device_problem() -> str | None:
    """Why this process's first device cannot run the Pallas kernels; None where it can.

    The kernels are Mosaic GPU code for Hopper's wgmma and TMA: compute capability 9.0
    (sm_90a: H100, H200, GH200, H800), nothing older and not Blackwell.
    """
    try:
        dev = jax.devices()[0]
    except RuntimeError as e:
        return f"no device could be initialised ({e})"
    if dev.platform != "gpu":
        return f"this process's device is a {dev.platform.upper()}"
    capability = getattr(dev, "compute_capability", None)
    if capability != "9.0":
        return f"this process's GPU, {dev.device_kind}, has compute capability {capability}, not Hopper's 9.0"
    return None


def default_impl() -> str:
    """The kernel on Hopper GPUs, the reference elsewhere."""
    return "pallas" if kernel_device_problem() is None else "xla"


def require_kernel_device(impl: str) -> None:
    """Raise ValueError up front where a forced Pallas ``impl`` cannot run on this process's device.

    For the commands: without it, ``--attention-impl pallas`` on a CPU or an older GPU fails
    only when the first step compiles, with Pallas's own message. Not called inside
    ``mosaic_attention``: tracing on a CPU host is right for interpret-mode tests and for
    compiling for the H100 without one (``experiments/h100_compile.py``).
    """
    if impl in ("pallas", "pallas-fused") and (problem := kernel_device_problem()):
        raise ValueError(f"attention impl {impl!r} runs the Pallas Mosaic GPU kernels, which need a Hopper GPU "
                         f"(H100, H200); {problem}. Use 'auto' (the kernels where they run, the xla "
                         "reference elsewhere) or 'xla'")


def mosaic_attention(q: jax.Array, k: jax.Array, v: jax.Array, gates: jax.Array, *, block_attn_size: int,
                     sparse_block_size: int, top_k: int, impl: Impl = "auto", out_dtype: Any = None,
                     batch_sharding: BatchSharding | None = None) -> jax.Array:
    """Gated sum of local, compressed and top-k selected block attention (SPEC.md).

    q (B, N, Hq, d); k, v (B, N, Hk, d), RoPE already applied; gates (B, N, Hq, 3) are
    the softmaxed branch weights. Returns (B, N, Hq, d) in ``out_dtype``, by default the
    accumulation dtype (float32; float64 for float64 inputs on the xla path). The branches
    accumulate in it whatever ``out_dtype`` is, so the fused kernel can write the model's
    compute dtype directly. ``batch_sharding``: how
    B is split over devices inside a sharded jit (used by the Pallas kernels only).
    """
    validate_shapes(q, k, v, gates, block_attn_size=block_attn_size, sparse_block_size=sparse_block_size,
                    top_k=top_k)
    if impl == "auto":
        impl = default_impl()
        if impl == "pallas":
            from pallas_kernels import mosaic_attention as kernels

            try:
                kernels.check_kernel_shapes(q, k, v, sparse_block_size=sparse_block_size, top_k=top_k,
                                            block_attn_size=block_attn_size)
            except NotImplementedError:  # shapes or dtypes the kernels do not take (e.g. float32)
                impl = "xla"
    if impl == "xla":
        o = reference.mosaic_attention(q, k, v, gates, block_attn_size=block_attn_size,
                                       sparse_block_size=sparse_block_size, top_k=top_k)
        return o if out_dtype is None else o.astype(out_dtype)
    if impl in ("pallas", "pallas-fused"):
        from pallas_kernels import mosaic_attention as kernels  # imported lazily: GPU-only code

        config = kernels.SelectionConfig(fuse_forward=impl == "pallas-fused")

        def kernel(q: jax.Array, k: jax.Array, v: jax.Array, gates: jax.Array) -> jax.Array:
            return kernels.mosaic_attention(q, k, v, gates, block_attn_size=block_attn_size,
                                            sparse_block_size=sparse_block_size, top_k=top_k,
                                            out_dtype=out_dtype or jnp.float32, config=config)

        return per_device(kernel, batch_sharding, (q, k, v, gates))
    raise ValueError(f"impl must be one of {ATTENTION_IMPLS}, got {impl!r}")


def per_device(kernel: Callable[..., jax.Array], batch_sharding: BatchSharding | None, batched: tuple[jax.Array, ...],
               replicated: tuple[jax.Array, ...] = ()) -> jax.Array:
    """``kernel(*batched, *replicated)`` with the batch split as ``batch_sharding`` says.

    A Pallas kernel is per-device code: under a sharded jit, each device runs it on its own
    slice of the ``batched`` arguments (leading dim) under ``jax.shard_map``; ``replicated``
    arguments (weights) are whole on every device.
    """
    if batch_sharding is None or batch_sharding.num_shards == 1:
        return kernel(*batched, *replicated)
    batch = batched[0].shape[0]
    if batch % batch_sharding.num_shards:
        raise ValueError(f"batch {batch} is not divisible by the {batch_sharding.num_shards} devices "
                         f"of mesh axes {batch_sharding.axes}")
    spec = PartitionSpec(batch_sharding.axes)
    in_specs = (spec,) * len(batched) + (PartitionSpec(),) * len(replicated)
    return jax.shard_map(kernel, mesh=batch_sharding.mesh, in_specs=in_specs, out_specs=spec,
                         check_vma=False)(*batched, *replicated)
