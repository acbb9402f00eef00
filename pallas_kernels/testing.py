"""Helpers the kernel tests share: GPU interpret mode and the error measure of issue 3's bounds."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import numpy as np
from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks  # jax 0.11.2: no public race-state API
from jax.experimental.pallas import mosaic_gpu as plgpu

TOL_16BIT = 2e-2  # relative L2 bound for kernels with 16-bit inputs (issue 3)


@contextlib.contextmanager
def interpret() -> Iterator[None]:
    """Trace Mosaic GPU kernels for the CPU: barriers, TMA and wgmma simulated, races detected.

    Raises AssertionError on leaving the block if a kernel run inside it raced, so every test
    that interprets a kernel checks for races, and a race is charged to the block that ran it.
    """
    gpu_callbacks.reset_gpu_interpret_mode_state()
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams(detect_races=True)):
        yield
    jax.effects_barrier()  # the kernels' simulation runs in callbacks: let it finish
    assert not _races_found(), "a kernel interpreted in this block raced (GPU interpret mode's detector)"


def _races_found() -> bool:
    """Whether a kernel interpreted since the last reset raced; False when none ran (interpret
    mode creates its race state with the first kernel, so asking it directly would fail)."""
    state = gpu_callbacks._races
    return state is not None and state.races_found


def rel_l2(x, ref) -> float:
    """Relative L2 error in float64; fails on non-finite values (an unwritten output is NaN in interpret mode)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert np.isfinite(x).all(), "non-finite values (unwritten output?)"
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))
