"""Per-device memory of a compiled stage-2 train step (AOT, no weights allocated): does a config fit?

    python -m benchmarks.train_memory                                  # 1.4B on 8 x 80 GB, v4-32, v5e-64
    python -m benchmarks.train_memory --config imagenet_3800m --batch 2048
    python -m benchmarks.train_memory --targets a100x8 --batch 256 --remat none --microbatches 1

Lowers `rq_jax.trainers.rq_transformer.train_step` (the real jitted step: soft labels and stochastic codes
drawn from the features, AdamW, the parameters' logical axes mapped by `rq_jax.sharding`) for abstract
inputs on a mesh of fake devices, compiles it, and prints `compiled.memory_analysis()` per device:
arguments (parameters + AdamW state + batch), outputs (aliased with the donated state) and temporaries
(activations, gradients). With XLA_FLAGS=--xla_force_host_platform_device_count this runs on the CPU:
the numbers are the CPU compiler's (layouts and fusion differ from TPU/GPU; bf16 matmuls may be upcast), a
planning estimate. For the target compiler's figure without the hardware, use `python -m rq_jax.compile_check`
(libtpu / the CUDA plugin; benchmarks/tpu_compile.py has the paper's configs).

Targets: devices, memory per device and the mesh (FSDP over all chips: parameters, gradients and
optimizer state split 1/N; the batch over data x fsdp).
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=64"

import argparse  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rq_jax import sharding  # noqa: E402
from rq_jax.config_lib import load_config_file  # noqa: E402
from rq_jax.trainers import rq_transformer as t2  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
GiB = 2**30
TARGETS = {  # name: (devices, GiB per device, mesh)
    "a100x8": (8, 80, {"data": 1, "fsdp": 8, "tensor": 1}),
    "v4-32": (16, 32, {"data": 1, "fsdp": 16, "tensor": 1}),
    "v5e-64": (64, 16, {"data": 1, "fsdp": 64, "tensor": 1}),
    "v5e-64-tp4": (64, 16, {"data": 1, "fsdp": 16, "tensor": 4}),
}


def analyse(config_name: str, target: str, batch: int, remat: str, scan: bool, dtype: str, micro: int) -> dict:
    n, gib, mesh_shape = TARGETS[target]
    config = load_config_file(str(REPO / "configs" / "transformer" / f"{config_name}.py"))
    config.model.update(dict(remat=remat, scan_layers=scan, dtype=dtype))
    config.train.batch_size = batch
    config.train.microbatches = micro
    mesh = sharding.mesh_from_config(mesh_shape, devices=jax.devices()[:n])
    tx, _ = t2.make_optimizer(config.train, 1000)
    setup = t2.setup_state(config, mesh, tx)
    h, w, _ = config.model.code_shape
    bsh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    batch_abs = {
        "features": jax.ShapeDtypeStruct((batch, h, w, config.model.embed_dim), jnp.float32, sharding=bsh),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bsh),
        "caption": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bsh),
    }
    codebook = jax.ShapeDtypeStruct((config.model.vocab_size, config.model.embed_dim), jnp.float32, sharding=repl)
    text = jax.ShapeDtypeStruct((1, 1), jnp.int32, sharding=repl)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = t2.jit_train_step(config, mesh, setup).lower(setup.abstract, batch_abs, codebook, text).compile()
    mem = compiled.memory_analysis()
    params = sum(x.size for x in jax.tree.leaves(setup.abstract["params"]))
    args, out, temp = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes
    alias = getattr(mem, "alias_size_in_bytes", 0)
    total = args + out - alias + temp
    return dict(config=config_name, target=target, params=params, batch=batch, per_device_batch=batch // n,
                remat=remat, scan=scan, dtype=dtype, micro=micro, args=args / GiB, out=out / GiB, alias=alias / GiB,
                temp=temp / GiB, total=total / GiB, capacity=gib, fits=total / GiB < gib,
                compile_s=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="imagenet_1400m", help="a Table 5 row: the name of a configs/transformer/*.py")
    p.add_argument("--targets", nargs="+", default=["a100x8", "v4-32", "v5e-64", "v5e-64-tp4"], choices=list(TARGETS))
    p.add_argument("--batch", type=int, default=2048, help="global batch (the paper's 1.4B: 2048)")
    p.add_argument("--remat", default="full")
    p.add_argument("--no_scan", action="store_true", help="unrolled layers (slow to compile)")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters stay float32)")
    p.add_argument("--microbatches", type=int, default=4, help="gradient accumulation slices of the batch")
    a = p.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices")
    head = f"{'config':<16}{'target':<8}{'params':>8}{'batch/dev':>10}{'args':>8}{'temp':>8}{'total':>8}{'of':>6}  fits"
    print(head)
    for target in a.targets:
        r = analyse(a.config, target, a.batch, a.remat, not a.no_scan, a.dtype, a.microbatches)
        print(f"{r['config']:<16}{r['target']:<8}{r['params'] / 1e9:>7.2f}B{r['per_device_batch']:>10}"
              f"{r['args']:>7.1f}G{r['temp']:>7.1f}G{r['total']:>7.1f}G{r['capacity']:>5}G  {r['fits']}"
              f"   (compile {r['compile_s']:.0f} s, {r['micro']} microbatches, remat {r['remat']}, scan {r['scan']}, "
              f"{r['dtype']})")


if __name__ == "__main__":
    main()
