"""Device meshes and shardings from the config (pjit style).

`config.mesh.shape` maps mesh axis names to sizes, one of which may be -1 ("the rest"), e.g.
`{"data": -1, "fsdp": 1, "tensor": 1}`. Batches are sharded over every data-parallel axis
("data" and "fsdp"); parameters here are replicated (FSDP/tensor parallel rules: a later issue).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def mesh_from_config(shape: Mapping[str, int] | None = None, devices: list | None = None) -> Mesh:
    """A mesh with Auto axis types over `devices` (default: all), resolving one -1 axis size."""
    devices = list(jax.devices()) if devices is None else list(devices)
    shape = dict(shape or {"data": -1})
    sizes = list(shape.values())
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh.shape may have at most one -1 axis, got {shape}.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"config.mesh.shape {shape} does not divide the {len(devices)} devices.")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"config.mesh.shape {shape} needs {int(np.prod(sizes))} devices but {len(devices)} are "
            "available; use -1 for one axis to take the rest."
        )
    names = tuple(shape)
    return jax.make_mesh(
        tuple(sizes), names, axis_types=(jax.sharding.AxisType.Auto,) * len(names), devices=devices
    )


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def global_batch(mesh: Mesh, local_batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global arrays sharded over the batch axes (multi-host safe)."""
    sh = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in local_batch.items()}


def place(tree: Any, shardings: Any) -> Any:
    """Puts every leaf on its sharding in a buffer of its own (copies): donating a state fails when two
    leaves share a buffer, as a fresh codebook's embedding and EMA sums do."""
    import jax.numpy as jnp

    return jax.tree.map(lambda a, s: jax.device_put(jnp.array(a, copy=True), s, may_alias=False), tree, shardings)
