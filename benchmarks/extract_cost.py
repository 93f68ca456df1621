"""What extracting a dataset's stage-2 features costs: the encoder's FLOPs and time per image, the bytes.

    python -m benchmarks.extract_cost                          # ImageNet's 8x8x4 RQ-VAE, 1.28M images + flips
    python -m benchmarks.extract_cost --config configs/rqvae/ffhq_8x8x4.py --images 60000

Measured here: XLA's FLOP count of the real encoder (`RQVAE.encode_features`, random weights) per image, and its
time per image on this machine at --batch. Computed from them: the bytes of the ArrayRecord shards
(`rq_jax.data.feature_format`: 24 + 2*h*w*C bytes a record, +4% ArrayRecord framing as measured on 32 KiB
records) and the hours on accelerators at their bf16 peak (`rq_jax.metrics.PEAK_FLOPS`) times --mfu, an
assumption, since no accelerator was measured (the encoder's convolutions reach 30-50% on GPUs and TPUs).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax.data import feature_format as fmt
from rq_jax.metrics import PEAK_FLOPS
from rq_jax.runs import abstract_rqvae

ACCELERATORS = (("TPU v4 chip", "v4"), ("TPU v5e chip", "v5e"), ("TPU v5p chip", "v5p"), ("A100", "a100"),
                ("H100", "h100"))
FRAMING = 1.04  # ArrayRecord bytes / record bytes, measured for 32 KiB records (group_size:1, uncompressed)


def load_config(path: str):
    sys.path.insert(0, ".")
    from rq_jax.config_lib import load_config_file

    return load_config_file(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/rqvae/imagenet_8x8x4.py")
    p.add_argument("--images", type=int, default=1_281_167, help="training images (ImageNet: 1,281,167)")
    p.add_argument("--val_images", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--mfu", type=float, default=0.4, help="assumed fraction of the bf16 peak on accelerators")
    p.add_argument("--decode_per_core", type=float, default=375.0,
                   help="images/s per core of the input pipeline (benchmarks.data_throughput: 374.5 here)")
    p.add_argument("--write_gbps", type=float, default=0.57,
                   help="GB/s the shards are written at (benchmarks.data_throughput: 0.57 to local disk here)")
    a = p.parse_args(argv)

    config = load_config(a.config)
    from flax import nnx

    graph, state = nnx.split(abstract_rqvae(config))
    state = jax.tree.map(lambda s: jnp.asarray(np.random.default_rng(0).normal(0, 0.02, s.shape), s.dtype), state)
    size = int(config.data.image_size)
    x = jnp.zeros((a.batch, size, size, 3), jnp.float32)
    encode = jax.jit(lambda s, x: nnx.merge(graph, s).encode_features(x))
    compiled = encode.lower(state, x).compile()
    flops = float(compiled.cost_analysis()["flops"]) / a.batch
    compiled(state, x).block_until_ready()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        compiled(state, x).block_until_ready()
        times.append((time.perf_counter() - t0) / a.batch)
    per_image = min(times)
    shape = (*config.model.code_shape[:2], int(config.model.embed_dim))
    record = fmt.record_dtype(shape).itemsize
    records = 2 * a.images + a.val_images  # training images and their flips, validation without
    encodes = records  # every record is one encoder pass
    gb = records * record * FRAMING / 1e9

    print(f"{a.config}: image {size}px -> features {shape} float16, {record:,} bytes a record")
    print(f"measured: {flops / 1e9:.1f} GFLOP per image (XLA cost analysis); {per_image:.2f} s per image on "
          f"{jax.devices()[0].device_kind} ({jax.device_count()} device(s), batch {a.batch})")
    print(f"computed: {records:,} records ({a.images:,} images x 2 flips + {a.val_images:,}), {gb:.1f} GB of shards, "
          f"{encodes * flops / 1e15:.1f} PFLOP")
    decodes = a.images + a.val_images  # a flip is encoded from the decoded image
    print("| work | total | how |")
    print("| --- | --- | --- |")
    for name, key in ACCELERATORS:
        peak = next(v for k, v in PEAK_FLOPS if k == key)
        print(f"| encoder on {name} | {encodes * flops / (peak * a.mfu) / 3600:.2f} chip-hours | computed: "
              f"{peak / 1e12:.0f} TFLOP/s x {a.mfu:.0%} |")
    print(f"| encoder on this CPU | {encodes * per_image / 3600:,.0f} hours | measured rate |")
    print(f"| JPEG decode, crop, resize | {decodes / a.decode_per_core / 3600:.2f} core-hours | "
          f"{a.decode_per_core:g} images/s per core |")
    print(f"| writing the shards | {gb / a.write_gbps / 3600:.2f} hours | {a.write_gbps:g} GB/s |")


if __name__ == "__main__":
    main()
