"""TPU slices as compile-only devices: `compile_only_devices("v5e-64")` runs nowhere but compiles for real.

With libtpu installed (`pip install "jax[tpu]==<jax version>"`), JAX builds the devices of any TPU
topology on a CPU-only machine (`jax.experimental.topologies.get_topology_desc`); programs jitted over a
mesh of them are compiled by the TPU compiler, whose `memory_analysis()` is what a slice would allocate.

Names a user types: Cloud accelerator types (`v4-32`, `v5litepod-64` or `v5e-64`, `v5p-128`, `v6e-16`;
v4 and v5p count TensorCores, two per chip, v5e and v6e count chips) or explicit topologies
(`v5e:8x8`, `v4:2x2x4`). `num_slices` > 1 gives a multi-slice set (devices carry `slice_index`).

Chip figures (`CHIPS`), per chip, from Google Cloud's TPU documentation (system architecture pages,
checked 2026-12): peak dense bf16 FLOP/s, HBM bandwidth, HBM capacity.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: peak bf16 FLOP/s, HBM bytes/s and HBM bytes per JAX device (= per chip)."""

    name: str
    peak_flops: float
    hbm_bandwidth: float
    hbm_bytes: int
    dims: int                 # 3 for v4/v5p (3-D torus), 2 for v5e/v6e
    cores_in_name: bool       # accelerator type counts TensorCores (2 per chip), not chips
    accelerator_prefix: str   # Cloud's accelerator-type prefix, for TPU_ACCELERATOR_TYPE


CHIPS = {
    "v4": Chip("v4", 275e12, 1228e9, 32 * GiB, 3, True, "v4"),
    "v5e": Chip("v5e", 197e12, 819e9, 16 * GiB, 2, False, "v5litepod"),
    "v5p": Chip("v5p", 459e12, 2765e9, 95 * GiB, 3, True, "v5p"),
    "v6e": Chip("v6e", 918e12, 1640e9, 32 * GiB, 2, False, "v6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}


class TopologyError(ValueError):
    """A topology name that is not a TPU slice this tool knows, or libtpu is missing."""


@dataclasses.dataclass(frozen=True)
class Slice:
    """A parsed topology: chip generation, chip grid, slices."""

    chip: Chip
    shape: tuple[int, ...]  # chips per dimension of one slice
    num_slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def topology_name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

    @property
    def accelerator_type(self) -> str:
        n = self.chips_per_slice * (2 if self.chip.cores_in_name else 1)
        return f"{self.chip.accelerator_prefix}-{n}"

    def __str__(self) -> str:
        multi = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        return f"{self.accelerator_type} ({self.topology_name}, {self.num_chips} chips{multi})"


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid Cloud uses for a slice of `chips` chips: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ... (3-D)
    or 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, ... (2-D): from 2x2(x1), double the smallest side, the last on ties."""
    if chips & (chips - 1) or chips < 1:
        raise TopologyError(f"a slice of {chips} chips is not a power of two; give the grid, e.g. v5e:4x8.")
    if chips < 4:
        if dims == 3:
            raise TopologyError(f"a {chips}-chip 3-D slice does not exist; the smallest is 4 chips (2x2x1).")
        return (1, chips)
    shape = [2, 2, 1] if dims == 3 else [2, 2]
    while math.prod(shape) < chips:
        i = max(j for j, v in enumerate(shape) if v == min(shape))
        shape[i] *= 2
    return tuple(shape)


def parse(name: str, num_slices: int = 1) -> Slice:
    """`v5e-64`, `v5litepod-64`, `v4-32`, `v5p-128`, `v6e-8` or `v5e:8x8`, `v4:2x2x4` -> a Slice."""
    text = name.strip().lower()
    if num_slices < 1:
        raise TopologyError(f"--num_slices must be >= 1, got {num_slices}.")
    known = ", ".join(sorted(CHIPS))
    m = re.fullmatch(r"(v\d+[a-z]*)(?::(\d+(?:x\d+)*)|-(\d+))", text)
    if not m:
        raise TopologyError(f"unknown TPU topology {name!r}; give an accelerator type such as v5e-64, v4-32, "
                            f"v5p-128 or a chip grid such as v5e:8x8 or v4:2x2x4 (chips: {known}).")
    gen = ALIASES.get(m.group(1), m.group(1))
    if gen not in CHIPS:
        raise TopologyError(f"unknown TPU generation {m.group(1)!r} in {name!r}; known: {known}.")
    chip = CHIPS[gen]
    if m.group(2):
        shape = tuple(int(v) for v in m.group(2).split("x"))
        if len(shape) == 2 and chip.dims == 3:
            shape = shape + (1,)
        if len(shape) != chip.dims or min(shape) < 1:
            raise TopologyError(f"{name!r}: a {gen} grid has {chip.dims} dimensions, e.g. "
                                f"{gen}:{'x'.join(['2'] * chip.dims)}.")
    else:
        n = int(m.group(3))
        if chip.cores_in_name and n % 2:
            raise TopologyError(f"{name!r}: {gen} accelerator types count TensorCores (2 per chip): use an even "
                                f"number, e.g. {gen}-8.")
        shape = _grid(n // 2 if chip.cores_in_name else n, chip.dims)
    return Slice(chip, shape, num_slices)


def libtpu_version() -> str | None:
    """The installed libtpu's version, or None when it is not installed."""
    from importlib import metadata

    for dist in ("libtpu", "libtpu-nightly"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def compile_only_devices(tpu: Slice) -> list:
    """The devices of `tpu` (compile only: programs over them compile with libtpu and never run).

    Sets TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES if unset, which libtpu otherwise warns about on a
    machine without TPUs, and ALLOW_MULTIPLE_LIBTPU_LOAD. Raises TopologyError with the install command when
    libtpu is missing.
    """
    if libtpu_version() is None:
        import jax

        raise TopologyError(f"compiling for TPU needs libtpu: pip install \"jax[tpu]=={jax.__version__}\" "
                            "(about 700 MB; no TPU needed).")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", tpu.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compile-only devices open no chip: several compiling processes (or a training job on this TPU VM, whose
    # chips libtpu's lockfile guards) can coexist.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    import jax
    from jax.experimental import topologies

    kwargs = {}
    if tpu.chip.cores_in_name:
        kwargs["chip_config_name"] = "megacore"  # one JAX device per chip, as on a real v4 / v5p
    if tpu.chips_per_slice < 4 or min(tpu.shape[:2]) < 2:
        kwargs["chips_per_host_bounds"] = tuple(tpu.shape) + (1,) * (3 - len(tpu.shape))
    if tpu.num_slices > 1:
        kwargs["num_slices"] = tpu.num_slices
    try:
        desc = topologies.get_topology_desc(topology_name=tpu.topology_name, platform="tpu", **kwargs)
    except (jax.errors.JaxRuntimeError, RuntimeError, ValueError) as e:
        raise TopologyError(f"libtpu rejects the topology {tpu.topology_name}: {str(e).splitlines()[0]}") from e
    return list(desc.devices)
