"""Benchmark of the nearest-code search: prints one table row per (implementation, N, K, D).

    python -m benchmarks.nearest_code            # N in {8192, 65536}, K in {2048, 16384}, D = 256
    python -m benchmarks.nearest_code --quick    # small sizes for a CPU
    python -m benchmarks.nearest_code --n 4096 --k 1024 4096 --d 64 --impls xla dense

Implementations: "xla" (the chunked reference), "dense" (the whole N x K distance matrix at once, as
the official PyTorch code does with `addmm` + `argmin`: the baseline the fused kernels avoid), and
the Pallas kernel of the default backend ("pallas_gpu" / "pallas_tpu"); `--interpret` adds both
Pallas kernels in interpret mode (correctness only: their timings mean nothing).

Columns: median wall time of `--repeats` calls after a warm-up; "temp MiB" is XLA's temporary
allocation for the compiled call (`memory_analysis().temp_size_in_bytes`: the N x K matrix shows up
here, and a fused kernel's padded copies of the inputs); TFLOP/s counts the 2*N*K*D flops of the
distance matmul; GB/s counts the compulsory traffic (read z and the codebook once, write indices and
distances), so it is an effective bandwidth, comparable across implementations.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax.kernels.nearest_code import nearest_code, nearest_code_reference, resolve_impl


def nearest_code_dense(z_NxC: jax.Array, codebook_KxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The official implementation's recipe: materialise all N x K distances, then argmin."""
    z = z_NxC.astype(jnp.float32)
    e = codebook_KxC.astype(jnp.float32)
    dist_NxK = (jnp.sum(z * z, axis=1, keepdims=True) + jnp.sum(e * e, axis=1)[None, :]) - 2.0 * jnp.dot(
        z, e.T, precision=jax.lax.Precision.HIGHEST
    )
    idx_N = jnp.argmin(dist_NxK, axis=1).astype(jnp.int32)
    return idx_N, jnp.maximum(jnp.take_along_axis(dist_NxK, idx_N[:, None], axis=1)[:, 0], 0.0)


def implementations(interpret: bool) -> dict[str, Callable]:
    """Name -> fn(z_NxC, codebook_KxC) -> (idx_N, dist_N), for what this machine can run."""
    impls: dict[str, Callable] = {
        "xla": nearest_code_reference,
        "dense": nearest_code_dense,
    }
    native = resolve_impl("auto")
    if native != "xla":
        impls[native] = functools.partial(nearest_code, impl=native, return_distance=True)
    if interpret:
        for name in ("pallas_gpu", "pallas_tpu"):
            impls[f"{name}(interp)"] = functools.partial(
                nearest_code, impl=name, return_distance=True, interpret=True
            )
    return impls


def bench_one(fn: Callable, n: int, k: int, d: int, dtype: jnp.dtype, repeats: int) -> dict[str, float]:
    """Compiles fn for [n, d] x [k, d], reports its temp memory, then times `repeats` calls."""
    rng = np.random.default_rng(0)
    z_NxD = jnp.asarray(rng.normal(size=(n, d)), dtype)
    codebook_KxD = jnp.asarray(rng.normal(size=(k, d)), dtype)
    compiled = jax.jit(fn).lower(z_NxD, codebook_KxD).compile()
    try:
        temp_bytes = float(compiled.memory_analysis().temp_size_in_bytes)
    except (AttributeError, NotImplementedError, TypeError):
        temp_bytes = float("nan")
    jax.block_until_ready(compiled(z_NxD, codebook_KxD))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(z_NxD, codebook_KxD))
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    itemsize = jnp.dtype(dtype).itemsize
    traffic = (n * d + k * d) * itemsize + n * 8
    return {
        "ms": seconds * 1e3,
        "temp_mib": temp_bytes / 2**20,
        "tflops": 2.0 * n * k * d / seconds / 1e12,
        "gbs": traffic / seconds / 1e9,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (N 1024/4096, K 512/2048)")
    parser.add_argument("--n", type=int, nargs="+", help="numbers of vectors (default 8192 65536)")
    parser.add_argument("--k", type=int, nargs="+", help="codebook sizes (default 2048 16384)")
    parser.add_argument("--d", type=int, nargs="+", help="embedding dimensions (default 256)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--impls", nargs="+", help="subset of implementations to run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--interpret", action="store_true", help="add the Pallas kernels in interpret mode")
    parser.add_argument(
        "--max-dense-gib", type=float, default=8.0, help="skip 'dense' when its N x K matrix is larger"
    )
    args = parser.parse_args(argv)

    ns = args.n or ([1024, 4096] if args.quick else [8192, 65536])
    ks = args.k or ([512, 2048] if args.quick else [2048, 16384])
    ds = args.d or [256]
    impls = implementations(args.interpret)
    if args.impls:
        unknown = set(args.impls) - set(impls)
        if unknown:
            parser.error(f"unavailable implementations {sorted(unknown)}; choose from {sorted(impls)}")
        impls = {name: impls[name] for name in args.impls}
    dtype = jnp.dtype(args.dtype)

    print(
        f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}, {dtype}"
    )
    header = (
        f"{'impl':<18} {'N':>7} {'K':>7} {'D':>5} {'time ms':>10} {'temp MiB':>10} {'TFLOP/s':>9} {'GB/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for n in ns:
        for k in ks:
            for d in ds:
                for name, fn in impls.items():
                    if name == "dense" and n * k * 4 > args.max_dense_gib * 2**30:
                        print(f"{name:<18} {n:>7} {k:>7} {d:>5} {'skipped: N x K over --max-dense-gib':>40}")
                        continue
                    r = bench_one(fn, n, k, d, dtype, args.repeats)
                    print(
                        f"{name:<18} {n:>7} {k:>7} {d:>5} {r['ms']:>10.2f} {r['temp_mib']:>10.1f} "
                        f"{r['tflops']:>9.3f} {r['gbs']:>8.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
