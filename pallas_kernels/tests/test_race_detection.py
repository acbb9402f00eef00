"""The race check every kernel test relies on (``pallas_kernels.testing.interpret``) can fail.

One warpgroup writes shared memory and another reads it: without a barrier between them the
block must raise; with one it must not. A block that runs no kernel must pass, even as the
first in its process (CI once failed on such a test, scheduled first on a worker).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.testing import interpret


def copy_through_shared_memory(x: jax.Array, synchronized: bool) -> jax.Array:
    """Warpgroup 0 stores x in SMEM; warpgroup 1 loads it into the output."""

    def body(x_ref, o_ref, staging, written):
        warpgroup = jax.lax.axis_index("wg")

        @pl.when(warpgroup == 0)
        def _store():
            staging[...] = x_ref[...]
            if synchronized:
                plgpu.barrier_arrive(written)

        @pl.when(warpgroup == 1)
        def _load():
            if synchronized:
                plgpu.barrier_wait(written)
            o_ref[...] = staging[...]

    return plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct(x.shape, x.dtype),
        num_threads=2,
        thread_name="wg",
        scratch_types=[plgpu.SMEM(x.shape, x.dtype), plgpu.Barrier()],
    )(x)


def test_synchronized_copy_passes_and_is_exact():
    x = jnp.arange(128, dtype=jnp.float32)
    with interpret():
        y = copy_through_shared_memory(x, synchronized=True)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_unsynchronized_copy_is_reported_as_a_race():
    x = jnp.arange(128, dtype=jnp.float32)
    with pytest.raises(AssertionError, match="raced"):
        with interpret():
            copy_through_shared_memory(x, synchronized=False)


def test_a_block_that_runs_no_kernel_passes():
    with interpret():
        pass
