"""The race check every kernel test relies on (conftest.py) can fail, and is per test.

One warpgroup writes shared memory and another reads it: without a barrier between them
interpret mode's detector must report a race; with one it must not. A test that runs no
kernel must read as race-free (CI once failed on such a test, scheduled first on a worker).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.testing import interpret, races_found, reset_race_detection


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


@pytest.mark.parametrize("synchronized", [True, False])
def test_detector_reports_a_race_exactly_when_there_is_no_barrier(synchronized):
    x = jnp.arange(128, dtype=jnp.float32)
    with interpret():
        y = jax.block_until_ready(copy_through_shared_memory(x, synchronized))
    raced = races_found()
    reset_race_detection()  # the deliberate race must not fail the autouse check
    assert raced == (not synchronized)
    if synchronized:
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_no_kernel_run_reads_as_race_free():
    reset_race_detection()
    assert not races_found()
