"""Benchmark of one 3x3 stride-1 convolution: XLA's direct convolution against Winograd F(2x2) and F(4x4).

    python -m benchmarks.conv3x3                       # the ImageNet RQ-VAE's levels, batch 2 and 8
    python -m benchmarks.conv3x3 --batch 8 --shapes 256x128 32x512 --repeats 5
    python -m benchmarks.conv3x3 --quick               # tiny shapes (the smoke test)

One row per (batch, H=W, Cin -> Cout, algorithm): best wall time of `--repeats` warm calls of the jitted
convolution (forward only; the backward pass's input gradient is the same operation with the flipped
kernel), the effective GFLOP/s (the direct convolution's 2*9*Cin*Cout*B*H*W flops over the time, so the
algorithms are comparable), the speed-up over direct, and the largest absolute difference from the direct
result relative to its largest value. `rq_jax.models.conv` uses these numbers to decide where Winograd runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rq_jax.models import winograd

NHWC = ("NHWC", "HWIO", "NHWC")
# (H, Cin, Cout) of the ImageNet 8x8x4 RQ-VAE's 3x3 convolutions (128 channels at 256 and 128 px, 256 at
# 64 and 32, 512 at 16 and 8), plus the decoder's channel changes.
DEFAULT_SHAPES = ["256x128", "128x128", "64x256", "32x256", "16x512", "8x512", "64x512x256", "256x256x128"]


def _parse(shape: str) -> tuple[int, int, int]:
    parts = [int(p) for p in shape.split("x")]
    return (parts[0], parts[1], parts[1]) if len(parts) == 2 else tuple(parts)  # type: ignore[return-value]


def _best(fn, *args, repeats: int) -> tuple[float, jax.Array]:
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times), out


def run(batches: list[int], shapes: list[str], repeats: int) -> list[dict]:
    direct = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC))
    algos = {f"winograd F({t}x{t})": jax.jit(lambda x, w, t=t: winograd.conv3x3(x, w, t)) for t in (2, 4)}
    rows = []
    for b in batches:
        for shape in shapes:
            h, cin, cout = _parse(shape)
            x = jax.random.normal(jax.random.key(0), (b, h, h, cin), jnp.float32)
            w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout), jnp.float32) / np.sqrt(9 * cin)
            flops = 2 * 9 * cin * cout * b * h * h
            t_direct, y = _best(direct, x, w, repeats=repeats)
            scale = float(jnp.max(jnp.abs(y)))
            rows.append(dict(batch=b, h=h, cin=cin, cout=cout, algo="direct (XLA)", s=t_direct,
                             gflops=flops / t_direct / 1e9, speedup=1.0, rel_err=0.0))
            for name, fn in algos.items():
                tile = int(name.split("(")[1][0])
                if not winograd.applies(x.shape, w.shape, tile):
                    continue
                t, yw = _best(fn, x, w, repeats=repeats)
                rows.append(dict(batch=b, h=h, cin=cin, cout=cout, algo=name, s=t, gflops=flops / t / 1e9,
                                 speedup=t_direct / t, rel_err=float(jnp.max(jnp.abs(yw - y))) / scale))
            for r in rows[-3:]:
                print(_row(r), flush=True)
    return rows


def _row(r: dict) -> str:
    return (f"| {r['batch']} | {r['h']} | {r['cin']} -> {r['cout']} | {r['algo']} | {r['s']:.4f} | "
            f"{r['gflops']:.0f} | {r['speedup']:.2f} | {r['rel_err']:.1e} |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="HxC or HxCinxCout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (the smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.shapes, args.repeats = [1], ["8x16", "12x8x16"], 1
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    print("| batch | H=W | channels | algorithm | s | GFLOP/s (direct's flops) | speed-up | max rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    return run(args.batch, args.shapes, args.repeats)


if __name__ == "__main__":
    main()
