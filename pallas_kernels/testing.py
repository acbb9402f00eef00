"""Helpers the kernel tests share: GPU interpret mode and the error measure of issue 3's bounds."""

from __future__ import annotations

import numpy as np
from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks  # jax 0.11.2: no public race-state API
from jax.experimental.pallas import mosaic_gpu as plgpu

TOL_16BIT = 2e-2  # relative L2 bound for kernels with 16-bit inputs (issue 3)


def interpret():
    """Trace Mosaic GPU kernels for the CPU: barriers, TMA and wgmma simulated, races detected."""
    return plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams(detect_races=True))


def rel_l2(x, ref) -> float:
    """Relative L2 error in float64; fails on non-finite values (an unwritten output is NaN in interpret mode)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert np.isfinite(x).all(), "non-finite values (unwritten output?)"
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def reset_race_detection() -> None:
    """Forget earlier kernels' race state, so a race is charged to the test whose kernel raced."""
    gpu_callbacks.reset_gpu_interpret_mode_state()


def races_found() -> bool:
    """Whether a kernel interpreted since the last reset raced.

    The state is created by the first kernel interpreted, so a test that runs none (a
    shape check, a flop count) has nothing to report: False, not an error.
    """
    state = gpu_callbacks._races
    return state is not None and state.races_found
