"""TPU slices and GPU hosts as compile-only devices: `compile_only_devices(parse("v5e-64"))` runs nowhere but
compiles for real.

With libtpu installed (`pip install "jax[tpu]==<jax version>"`), JAX builds the devices of any TPU
topology on a CPU-only machine (`jax.experimental.topologies.get_topology_desc`); programs jitted over a
mesh of them are compiled by the TPU compiler, whose `memory_analysis()` is what a slice would allocate.

Names a user types: Cloud accelerator types (`v4-32`, `v5litepod-64` or `v5e-64`, `v5p-128`, `v6e-16`;
v4 and v5p count TensorCores, two per chip, v5e and v6e count chips) or explicit topologies
(`v5e:8x8`, `v4:2x2x4`). `num_slices` > 1 gives a multi-slice set (devices carry `slice_index`).

GPUs (`a100-8`, `h100-16`: that many GPUs, 8 per host) compile through the pip CUDA plugin with no GPU
(`pip install jax-cuda12-plugin==<jax version> jax-cuda12-pjrt==<jax version>`, no CUDA libraries):
the plugin's topology takes XLA's GPU target description (`GpuTargetConfigProto` as text, written from
`GPU_SPECS` below) and a shape "slices x hosts x devices per host".

Chip figures (`CHIPS`), per chip: TPUs from Google Cloud's TPU documentation (system architecture pages),
GPUs from NVIDIA's data sheets (SXM parts, dense bf16 without sparsity); checked 2026-12. Peak FLOP/s,
HBM bandwidth, HBM capacity. A GPU program must fit the share JAX's allocator takes (75% of the memory,
or XLA_PYTHON_CLIENT_MEM_FRACTION): `Chip.usable_bytes`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation or GPU: peak bf16 FLOP/s, HBM bytes/s and HBM bytes per JAX device (= per chip)."""

    name: str
    peak_flops: float
    hbm_bandwidth: float
    hbm_bytes: int
    dims: int                 # 3 for v4/v5p (3-D torus), 2 for v5e/v6e
    cores_in_name: bool       # accelerator type counts TensorCores (2 per chip), not chips
    accelerator_prefix: str   # Cloud's accelerator-type prefix, for TPU_ACCELERATOR_TYPE
    platform: str = "tpu"

    @property
    def usable_bytes(self) -> float:
        """What a program may use: the HBM on TPU; JAX's allocator's share of it on GPU."""
        if self.platform == "tpu":
            return float(self.hbm_bytes)
        return self.hbm_bytes * float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))


CHIPS = {
    "v4": Chip("v4", 275e12, 1228e9, 32 * GiB, 3, True, "v4"),
    "v5e": Chip("v5e", 197e12, 819e9, 16 * GiB, 2, False, "v5litepod"),
    "v5p": Chip("v5p", 459e12, 2765e9, 95 * GiB, 3, True, "v5p"),
    "v6e": Chip("v6e", 918e12, 1640e9, 32 * GiB, 2, False, "v6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}
GPUS = {
    "a100": Chip("a100", 312e12, 2039e9, 85_899_345_920, 0, False, "a100", "cuda"),
    "h100": Chip("h100", 989e12, 3350e9, 84_942_979_072, 0, False, "h100", "cuda"),
    "h200": Chip("h200", 989e12, 4800e9, 150_754_820_096, 0, False, "h200", "cuda"),
}
# XLA's GPU target description per GPU (the fields its cost model and code generator read): compute capability,
# SMs, shared memory per SM / per block (opt-in), L2, memory size and bandwidth, clock.
GPU_SPECS = {
    "a100": dict(name="NVIDIA A100-SXM4-80GB", cc=(8, 0), sms=108, smem_core=167936, smem_optin=166912,
                 l2=41943040, clock=1.41, fpus=64),
    "h100": dict(name="NVIDIA H100 80GB HBM3", cc=(9, 0), sms=132, smem_core=233472, smem_optin=232448,
                 l2=52428800, clock=1.98, fpus=128),
    "h200": dict(name="NVIDIA H200", cc=(9, 0), sms=132, smem_core=233472, smem_optin=232448, l2=52428800,
                 clock=1.98, fpus=128),
}
GPUS_PER_HOST = 8


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
        if self.chip.platform == "cuda":  # slices x hosts x GPUs per host, as the CUDA plugin reads it
            return f"{self.num_slices}x{self.shape[0]}x{self.shape[1]}"
        return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

    @property
    def accelerator_type(self) -> str:
        if self.chip.platform == "cuda":
            return f"{self.chip.name}-{self.chips_per_slice}"
        n = self.chips_per_slice * (2 if self.chip.cores_in_name else 1)
        return f"{self.chip.accelerator_prefix}-{n}"

    def __str__(self) -> str:
        multi = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        if self.chip.platform == "cuda":
            hosts = f"{self.shape[0]} host{'s' if self.shape[0] > 1 else ''} of {self.shape[1]}"
            return f"{self.chips_per_slice} x {self.chip.name.upper()} ({hosts}){multi}"
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
    g = re.fullmatch(r"(a100|h100|h200)(?:-(\d+))?", text)
    if g:
        n = int(g.group(2) or 1)
        if n < 1 or (n > GPUS_PER_HOST and n % GPUS_PER_HOST):
            raise TopologyError(f"{name!r}: give up to {GPUS_PER_HOST} GPUs or a multiple of {GPUS_PER_HOST} (hosts of "
                                f"{GPUS_PER_HOST}), e.g. {g.group(1)}-8 or {g.group(1)}-32.")
        per_host = min(n, GPUS_PER_HOST)
        return Slice(GPUS[g.group(1)], (n // per_host, per_host), num_slices)
    m = re.fullmatch(r"(v\d+[a-z]*)(?::(\d+(?:x\d+)*)|-(\d+))", text)
    if not m:
        raise TopologyError(f"unknown TPU topology {name!r}; give an accelerator type such as v5e-64, v4-32, "
                            f"v5p-128, a chip grid such as v5e:8x8 or v4:2x2x4 (chips: {known}), or GPUs such as "
                            "h100-8 or a100-16.")
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


def _installed_version(*dists: str) -> str | None:
    """The version of the first of `dists` that is installed, or None."""
    from importlib import metadata

    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def libtpu_version() -> str | None:
    """The installed libtpu's version, or None when it is not installed."""
    return _installed_version("libtpu", "libtpu-nightly")


def cuda_plugin_version() -> str | None:
    """The installed jax CUDA plugin's version, or None."""
    return _installed_version("jax-cuda12-plugin", "jax-cuda13-plugin")


def gpu_target_config(chip: Chip) -> str:
    """XLA's GpuTargetConfigProto (text format) for a GPU of GPU_SPECS."""
    s = GPU_SPECS[chip.name]
    return "\n".join([
        "gpu_device_info {", "  threads_per_block_limit: 1024", "  threads_per_warp: 32",
        "  shared_memory_per_block: 49152", f"  shared_memory_per_core: {s['smem_core']}",
        "  threads_per_core_limit: 2048", f"  core_count: {s['sms']}", f"  fpus_per_core: {s['fpus']}",
        "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {int(chip.hbm_bandwidth)}", f"  l2_cache_size: {s['l2']}",
        f"  clock_rate_ghz: {s['clock']}", f"  device_memory_size: {chip.hbm_bytes}",
        f"  shared_memory_per_block_optin: {s['smem_optin']}",
        f"  cuda_compute_capability {{ major: {s['cc'][0]} minor: {s['cc'][1]} }}",
        "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536", "}",
        'platform_name: "CUDA"', "dnn_version_info { major: 9 minor: 1 patch: 0 }",
        f'device_description_str: "{s["name"]}"',
    ])


def _gpu_devices(gpus: Slice) -> list:
    if cuda_plugin_version() is None:
        import jax

        v = jax.__version__
        raise TopologyError(f"compiling for GPUs needs the CUDA plugin: pip install jax-cuda12-plugin=={v} "
                            f"jax-cuda12-pjrt=={v} (no GPU or CUDA libraries needed).")
    import jax
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(topology_name=gpus.chip.name, platform="cuda",
                                            target_config=gpu_target_config(gpus.chip), topology=gpus.topology_name)
    except (jax.errors.JaxRuntimeError, RuntimeError, ValueError, NotImplementedError) as e:
        raise TopologyError(f"the CUDA plugin rejects {gpus}: {str(e).splitlines()[0]}") from e
    return list(desc.devices)


def compile_only_devices(tpu: Slice) -> list:
    """The devices of `tpu` (compile only: programs over them compile with libtpu and never run).

    Sets TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES if unset, which libtpu otherwise warns about on a
    machine without TPUs, and ALLOW_MULTIPLE_LIBTPU_LOAD. Raises TopologyError with the install command when
    libtpu is missing. GPU slices go through the CUDA plugin (`gpu_target_config`).
    """
    if tpu.chip.platform == "cuda":
        return _gpu_devices(tpu)
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
