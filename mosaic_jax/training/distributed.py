"""Multi-process start-up through ``jax.distributed.initialize``.

Where the coordinator comes from, in order:
1. explicit arguments (``--coordinator-address host:port --num-processes N --process-id i``);
2. the environment: ``MOSAIC_COORDINATOR_ADDRESS``, ``MOSAIC_NUM_PROCESSES``, ``MOSAIC_PROCESS_ID``;
3. a SLURM job step with more than one task (``SLURM_NTASKS > 1``): JAX's own SLURM detection
   reads the node list, task count and rank (coordinator = first node, port from the job id).
Otherwise the run is single-process and nothing is initialised. On the CPU, cross-process
collectives go through gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax


@dataclass(frozen=True)
class DistributedInfo:
    process_id: int
    num_processes: int
    source: str  # "none" | "arguments" | "environment" | "slurm"


def slurm_multitask() -> bool:
    """True inside a SLURM job step that runs more than one task."""
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1"))) > 1


def _use_gloo_on_cpu() -> None:
    # CPU collectives across processes need an implementation; harmless on GPU runs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: list[int] | None = None) -> DistributedInfo:
    """Start the distributed runtime if this is a multi-process run (idempotent)."""
    if jax.distributed.is_initialized():
        return DistributedInfo(jax.process_index(), jax.process_count(), "already")
    env = os.environ
    if coordinator_address is None and "MOSAIC_COORDINATOR_ADDRESS" in env:
        coordinator_address = env["MOSAIC_COORDINATOR_ADDRESS"]
        num_processes = int(env["MOSAIC_NUM_PROCESSES"]) if num_processes is None else num_processes
        process_id = int(env["MOSAIC_PROCESS_ID"]) if process_id is None else process_id
        source = "environment"
    else:
        source = "arguments"
    if coordinator_address is not None:
        if num_processes is None or process_id is None:
            raise ValueError("distributed: a coordinator address needs --num-processes and --process-id")
        if num_processes <= 1:
            return DistributedInfo(0, 1, "none")
        _use_gloo_on_cpu()
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=local_device_ids)
        return DistributedInfo(jax.process_index(), jax.process_count(), source)
    if slurm_multitask():
        _use_gloo_on_cpu()
        jax.distributed.initialize(local_device_ids=local_device_ids)  # JAX's SLURM cluster detection
        return DistributedInfo(jax.process_index(), jax.process_count(), "slurm")
    return DistributedInfo(0, 1, "none")


def is_primary() -> bool:
    return jax.process_index() == 0


def any_across_processes(flag: bool) -> bool:
    """True if ``flag`` is true on any process (a tiny collective; local value on one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))).any())
