"""Device meshes and shardings from the config (pjit style).

`config.mesh.shape` maps mesh axis names to sizes, one of which may be -1 ("the rest"), e.g.
`{"data": -1, "fsdp": 1, "tensor": 1}`. Batches are sharded over every data-parallel axis
("data" and "fsdp").

Parameters carry *logical* axis names (`logical_axes(...)` on their initialisers, e.g. a transformer's
query kernel is ("embed", "heads"), a conv kernel (None, None, "conv_in", "conv_out")); one rules table,
`config.mesh.rules` (default `DEFAULT_RULES`), maps logical names to mesh axes. With the defaults:

    mesh {data: N}                  pure data parallelism: every parameter replicated
    mesh {data: A, fsdp: B}         FSDP: every weight's "embed"/"conv_in" dimension split over fsdp,
                                    optimizer state alike (it inherits the parameters' annotations)
    mesh {..., tensor: C}           tensor parallelism: attention heads, MLP hidden units, the vocabulary
                                    and conv output channels split over tensor

so FSDP and tensor parallelism are config changes. A dimension that the mesh axes do not divide is left
unsplit (replicated) rather than failing, so small models (and the tests' tiny ones) run on any mesh.
Shardings only decide where data lives: under `jit` the results are the same on every mesh.

Activations: a step is traced, called and lowered under `with jax.set_mesh(mesh):`, and enters its rules
table with `axis_rules(rules)` inside its body; `constrain` then pins activations by their logical names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Logical axis name -> mesh axis (or axes, or None = replicated). Names not listed are replicated.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),        # model width of the transformer weights
    ("heads", "tensor"),      # attention heads (q/k/v outputs, proj inputs)
    ("mlp", "tensor"),        # MLP hidden units
    ("vocab", "tensor"),      # code / text-token logits
    ("conv_in", "fsdp"),      # conv kernel input channels
    ("conv_out", "tensor"),   # conv kernel output channels (and their biases / norms stay replicated)
    ("classes", None),
    ("length", None),
    ("embed_act", None),      # the residual stream's width (activations; e.g. "tensor" for sequence-
                              # parallel-style layouts)
    ("norm", None),
    ("code_dim", None),
)


def logical_axes(initializer: Any, *names: str | None) -> Any:
    """An initialiser whose parameter carries logical axis `names` (one per dimension) as metadata.

    The annotation does not shard anything at creation (`eager_sharding=False`), so models can be built
    anywhere (a CPU test, `nnx.eval_shape`); `state_shardings` turns the names into shardings.
    """
    from flax import nnx

    return nnx.with_partitioning(initializer, tuple(names), eager_sharding=False)


def mesh_from_config(shape: Mapping[str, int] | None = None, devices: list | None = None,
                     dcn_shape: Mapping[str, int] | None = None) -> Mesh:
    """A mesh with Auto axis types over `devices` (default: all), resolving one -1 axis size.

    `dcn_shape` (multi-slice TPU, `config.mesh.dcn_shape`) gives how many slices each axis spans over the
    data-center network, e.g. shape {data: -1, fsdp: 16} with dcn_shape {data: 2} on two v4-32 slices:
    `shape` is then the per-slice (ICI) mesh and the devices are laid out by
    `mesh_utils.create_hybrid_device_mesh`, so only the `data` axis crosses slices.
    """
    devices = list(jax.devices()) if devices is None else list(devices)
    dcn = {k: int(v) for k, v in (dcn_shape or {}).items() if int(v) != 1}
    if dcn:
        return _hybrid_mesh(dict(shape or {"data": -1}), dcn, devices)
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


def mesh_from_run_config(mesh_config: Any) -> Mesh:
    """The mesh of a run's `config.mesh` (shape, and dcn_shape for multi-slice TPU) over all devices."""
    dcn = mesh_config.get("dcn_shape", None)
    return mesh_from_config(dict(mesh_config.shape), dcn_shape=dict(dcn) if dcn else None)


def _hybrid_mesh(shape: dict[str, int], dcn: dict[str, int], devices: list) -> Mesh:
    from jax.experimental import mesh_utils

    unknown = sorted(set(dcn) - set(shape))
    if unknown:
        raise ValueError(f"config.mesh.dcn_shape names axes {unknown} that config.mesh.shape does not have.")
    slices = int(np.prod(list(dcn.values())))
    if len(devices) % slices or not all(hasattr(d, "slice_index") for d in devices):
        raise ValueError(
            f"config.mesh.dcn_shape {dcn} needs {slices} slices of equal size whose devices report a slice_index "
            f"(multi-slice TPU); these {len(devices)} devices do not. Remove dcn_shape on a single slice."
        )
    per_slice = mesh_from_config(shape, devices[: len(devices) // slices])  # resolves -1 per slice
    names = tuple(shape)
    ici = tuple(per_slice.shape[n] for n in names)
    grid = mesh_utils.create_hybrid_device_mesh(ici, tuple(dcn.get(n, 1) for n in names), devices=devices)
    return Mesh(grid, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


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


def rules_from_config(rules: Any = None) -> Rules:
    """`config.mesh.rules` ([[logical, mesh axis | [axes] | None], ...]) or the defaults, as a tuple table."""
    if rules is None or len(rules) == 0:
        return DEFAULT_RULES
    out = []
    for item in rules:
        if len(item) != 2:
            raise ValueError(f"config.mesh.rules entries must be [logical_name, mesh_axes], got {item!r}.")
        name, axes = item
        out.append((str(name), tuple(axes) if isinstance(axes, (list, tuple)) else axes))
    return tuple(out)


def mesh_spec(logical: tuple, shape: tuple[int, ...], mesh: Mesh | AbstractMesh, rules: Rules = DEFAULT_RULES) -> P:
    """The mesh PartitionSpec of an array of `shape` whose dimensions have `logical` names.

    Mesh axes missing from the mesh, of size 1, already used by an earlier dimension, or not dividing
    the dimension are dropped (that dimension is then replicated over them).
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical)), strict=False):
        axes = table.get(name) if name is not None else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        keep = []
        for a in axes:
            size = mesh.shape.get(a, 1)
            if size > 1 and a not in used and dim % (size * int(np.prod([mesh.shape[k] for k in keep] or [1]))) == 0:
                keep.append(a)
        used.update(keep)
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def _logical_names(variable: Any) -> tuple | None:
    meta = variable.get_metadata()
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names is not None and not isinstance(names, (NamedSharding, P)):
            return tuple(names)
        if isinstance(names, P):
            return tuple(names)
    return None


def state_shardings(mesh: Mesh, abstract_state: Any, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for a train-state pytree (parameters, optimizer state, anything else).

    Every `nnx.Variable` with logical axis names (parameters, and the optimizer moments, which optax
    builds as copies of the parameter Variables and so inherit their metadata) is sharded by the rules;
    every other leaf is replicated. The result has the state's structure, for `jit` in/out shardings.
    """
    from flax import nnx

    repl = replicated(mesh)

    def one(x):
        if isinstance(x, nnx.Variable):
            value = x.get_value()
            if not hasattr(value, "shape"):  # a pytree-valued variable (the codebook state): replicated
                return x.replace(value=jax.tree.map(lambda _: repl, value))
            names, shape = _logical_names(x), tuple(value.shape)
            if names is None or len(shape) == 0:
                return x.replace(value=repl)
            return x.replace(value=NamedSharding(mesh, mesh_spec(names, shape, mesh, rules)))
        return repl

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying their shardings (the abstract target of a restore or an AOT lowering)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


def sharded_init(init_fn: Any, shardings: Any) -> Any:
    """Runs `init_fn()` under jit with `shardings` as out_shardings: parameters are created already
    sharded on their devices (pjit style), never built on one device and scattered."""
    return jax.jit(init_fn, out_shardings=shardings)()


def describe(mesh: Mesh, shardings: Any, abstract_state: Any) -> str:
    """"N params, X MiB per device" for a log line: the largest per-device share of the state."""
    total, per_device = 0, 0
    for a, s in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings), strict=True):
        nbytes = int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
        total += nbytes
        per_device += int(np.prod(s.shard_shape(a.shape))) * np.dtype(a.dtype).itemsize
    return f"state {total / 2**20:,.1f} MiB, {per_device / 2**20:,.1f} MiB per device on mesh {dict(mesh.shape)}"


# ---- activations ----------------------------------------------------------------------------------
def axis_rules(rules: Rules) -> contextlib.AbstractContextManager:
    """Within this context `constrain` maps logical names by `rules` (Flax's logical-axis-rules context).

    A jitted step enters it inside its own body, so the table is part of what is traced and a cached trace
    can never see another one; outside any such context `constrain` uses `DEFAULT_RULES`."""
    from flax.core import spmd

    return spmd.logical_axis_rules(rules)


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """`with_sharding_constraint` of an activation by logical axis names, e.g. ("batch", "length", "embed_act").

    It reads the mesh entered with `jax.set_mesh(mesh)` (part of jit's cache key, so a trace under one mesh
    is never reused under another or under none); with no mesh it does nothing, so models run unchanged on
    one device, in tests and in samplers."""
    from flax.core import spmd

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    rules = tuple(spmd.get_logical_axis_rules()) or DEFAULT_RULES
    return jax.lax.with_sharding_constraint(x, mesh_spec(names, x.shape, mesh, rules))
