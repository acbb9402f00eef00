"""The device mesh and how arrays are laid out on it.

Mesh axes are named once here: ``data`` and ``fsdp`` split the initial conditions of a batch,
``ensemble`` splits the members of each initial condition, and ``fsdp`` also splits parameters
and optimizer state (each weight along its largest dimension divisible by the fsdp size; XLA
all-gathers them for the forward and reduce-scatters the gradients). Logical array axes map to
mesh axes through ``AXIS_RULES``; nothing in the model names a physical axis.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, ENSEMBLE, FSDP = "data", "ensemble", "fsdp"
MESH_AXES = (DATA, ENSEMBLE, FSDP)

# logical axis -> mesh axes
AXIS_RULES: dict[str, tuple[str, ...]] = {
    "batch": (DATA, FSDP),            # initial conditions
    "member": (ENSEMBLE,),            # ensemble members
    "batch_member": (ENSEMBLE, DATA, FSDP),  # the flattened (member, batch) axis the model sees
    "weights": (FSDP,),               # one dimension of every large parameter
}


def make_mesh(data: int = -1, ensemble: int = 1, fsdp: int = 1, *, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, ensemble, fsdp)`` mesh over ``devices`` (default: all, every host).

    ``data=-1`` takes the devices left over by ``ensemble * fsdp``. Devices are laid out in
    process order, so the batch rows of host ``i`` land on host ``i``'s devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if ensemble < 1 or fsdp < 1:
        raise ValueError(f"mesh: ensemble and fsdp must be >= 1, got {ensemble}, {fsdp}")
    if data == -1:
        if n % (ensemble * fsdp):
            raise ValueError(f"mesh: {n} devices are not divisible by ensemble*fsdp = {ensemble * fsdp}")
        data = n // (ensemble * fsdp)
    if data * ensemble * fsdp != n:
        raise ValueError(f"mesh: data*ensemble*fsdp = {data}*{ensemble}*{fsdp} = {data * ensemble * fsdp} "
                         f"but there are {n} devices")
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices, dtype=object).reshape(data, ensemble, fsdp), MESH_AXES)


def logical_spec(*logical: str | None) -> P:
    """A PartitionSpec from logical axis names (``None``: replicated dimension)."""
    return P(*(None if name is None else AXIS_RULES[name] for name in logical))


def mesh_size(mesh: Mesh, logical: str) -> int:
    return math.prod(mesh.shape[a] for a in AXIS_RULES[logical])


def param_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
    """FSDP layout of one parameter: its largest dimension divisible by ``fsdp_size`` goes on
    the ``weights`` axes; small or indivisible parameters stay replicated."""
    if fsdp_size <= 1 or len(shape) == 0 or math.prod(shape) < min_size:
        return P()
    candidates = [i for i in range(len(shape)) if shape[i] % fsdp_size == 0]
    if not candidates:
        return P()
    best = max(candidates, key=lambda i: (shape[i], i))
    spec: list[Any] = [None] * len(shape)
    spec[best] = AXIS_RULES["weights"]
    return P(*spec)


def state_shardings(mesh: Mesh, abstract_tree: Any, *, min_size: int = 4096) -> Any:
    """NamedShardings for a pytree of arrays (parameters, optimizer state, counters).

    The layout depends only on a leaf's shape, so Adam's moments land exactly like their
    parameters."""
    fsdp_size = mesh_size(mesh, "weights")
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp_size, min_size)), abstract_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis = initial conditions, split over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, logical_spec("batch"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Host arrays -> global arrays; with several processes each passes its own rows."""
    if jax.process_count() > 1:
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}
