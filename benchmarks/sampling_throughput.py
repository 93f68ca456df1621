"""Sampling throughput of the RQ-Transformer (paper Sec. 4.3, Figure 4): seconds per image.

    python -m benchmarks.sampling_throughput --preset 1.4b --batch 100 200 500 --samples 5000   # a GPU
    python -m benchmarks.sampling_throughput --preset 1.4b --dry_run      # abstract models: sizes only
    python -m benchmarks.sampling_throughput --preset small --batch 4 8   # a CPU

Randomly initialised weights (no checkpoint: speed does not depend on them). For every code shape and
batch size: one warm-up call compiles the sampler (`rq_jax.sampling.sample_codes`, one jitted program with
KV caches) and the stage-1 decoder, then `ceil(samples / batch)` batches are timed with `block_until_ready`,
the autoregressive part and the RQ-VAE decoding separately, so s/image is reported without and with decoding.

Presets (class-conditional, as the paper's ImageNet model):
- `1.4b`: 42 spatial + 6 depth layers, d_model 1536, 24 heads, K 16384, bfloat16 compute and parameters
  (`--param_dtype float32` keeps float32 weights); stage 1 is the ImageNet RQ-VAE of that code shape
  (8x8x4: configs/rqvae/imagenet_8x8x4.py, 16x16x1: configs/rqvae/imagenet_16x16x1.py), float32.
- `small`: 4 + 2 layers, d_model 256, 8 heads, K 512, over a tiny runlocal-sized RQ-VAE (32x32 images).

16x16x1 is a VQ-GAN-like AR model: T = 256 positions, D = 1. As the official `measure_throughput`
(`vqgan_huge`: 48 + 0 layers against 42 + 6) it gets the depth layers folded into the spatial stack by
default, so both models have the same number of layers and about the same size; `--d1_layers same` keeps
the depth transformer instead. Sampling is plain (no top-k/top-p) unless `--top_k`/`--top_p` are given.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rq_jax.config_lib import load_config_file
from rq_jax.models.rq_transformer import RQTransformer, rq_transformer_model_config
from rq_jax.models.rqvae import RQVAE
from rq_jax.sampling import SamplingConfig, sample_codes

REPO = pathlib.Path(__file__).resolve().parents[1]

# Figure 4 / Sec. 4.3: 1.4B RQ-Transformer on one A100, 8x8x4, s/image including RQ-VAE decoding.
PAPER_A100_INCL_DECODE = {100: 0.039, 200: 0.025, 500: 0.019}
PAPER_SPEEDUP_EXCL_DECODE = {100: 4.1, 200: 5.6}  # 8x8x4 vs 16x16x1, stage-1 decoding excluded
PAPER_DECODE = 0.008  # s/image of RQ-VAE decoding

PRESETS: dict[str, dict] = {
    "1.4b": dict(d_model=1536, num_heads=24, spatial_layers=42, depth_layers=6, codebook_size=16384,
                 dtype="bfloat16", param_dtype="bfloat16", num_classes=1000),
    "small": dict(d_model=256, num_heads=8, spatial_layers=4, depth_layers=2, codebook_size=512,
                  dtype="float32", param_dtype="float32", num_classes=10),
}


@dataclasses.dataclass
class Result:
    """One row of the table."""

    preset: str
    code_shape: tuple[int, int, int]
    batch: int
    images: int
    ar_s_per_image: float
    decode_s_per_image: float

    @property
    def total_s_per_image(self) -> float:
        return self.ar_s_per_image + self.decode_s_per_image


def parse_code_shape(text: str) -> tuple[int, int, int]:
    """"8x8x4" -> (8, 8, 4)."""
    h, w, d = (int(s) for s in text.lower().split("x"))
    return h, w, d


def stage1_config(preset: str, code_shape: tuple[int, int, int]) -> ml_collections.ConfigDict:
    """The RQ-VAE config whose decoder renders the codes (ImageNet 256x256, or a 32x32 toy for `small`)."""
    base = {8: "imagenet_8x8x4", 16: "imagenet_16x16x1"}[code_shape[0]]  # f = 32 or f = 16 at 256x256
    path = str(REPO / "configs" / "rqvae" / f"{base}.py")
    if preset == "small":
        c = load_config_file(f"{path}:runlocal")
        f = 32 // code_shape[0]  # 32x32 images: f = 4 for 8x8 codes, 2 for 16x16
        c.model.ch_mult = (1,) + (2,) * int(math.log2(f))
    else:
        c = load_config_file(path)
    c.model.code_shape = tuple(code_shape)
    c.model.codebook_size = PRESETS[preset]["codebook_size"]
    return c


def transformer_model_config(preset: str, stage1: ml_collections.ConfigDict, *, d1_layers: str = "fold",
                             param_dtype: str | None = None) -> ml_collections.ConfigDict:
    """The RQ-Transformer of a preset over `stage1`'s codes (D = 1: depth layers folded in unless 'same')."""
    p = PRESETS[preset]
    spatial, depth = p["spatial_layers"], p["depth_layers"]
    if stage1.model.code_shape[2] == 1 and d1_layers == "fold":
        spatial, depth = spatial + depth, 0
    return rq_transformer_model_config(
        vocab_size=int(stage1.model.codebook_size), code_shape=tuple(stage1.model.code_shape),
        embed_dim=int(stage1.model.embed_dim), d_model=p["d_model"], num_heads=p["num_heads"],
        spatial_layers=spatial, depth_layers=depth, dropout=0.0, cond="class", num_classes=p["num_classes"],
        dtype=p["dtype"], param_dtype=param_dtype or p["param_dtype"],
    )


def num_params(model: nnx.Module) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def kv_cache_gib(model: RQTransformer, batch: int) -> float:
    """Size of the sampler's KV caches for `batch` sequences (shapes only)."""
    cache = jax.eval_shape(lambda: model.init_cache(batch))
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(cache)) / 2**30


def build(cls: type, config: ml_collections.ConfigDict, seed: int) -> nnx.Module:
    """A randomly initialised model, created by one jitted init (no eager per-layer initialisation)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(seed))))
    state = jax.jit(lambda: nnx.split(cls(config, rngs=nnx.Rngs(seed)))[1])()
    return nnx.merge(graphdef, state)


def measure_throughput(transformer: RQTransformer, rqvae: RQVAE, *, preset: str, batch: int, samples: int,
                       decode_batch: int, sampling: SamplingConfig, seed: int = 0) -> Result:
    """Seconds per image for `ceil(samples / batch)` batches of `batch`, after a warm-up (compile) batch."""
    codebook = rqvae.codebook_state.embedding_KxC
    cond = jnp.zeros((batch,), jnp.int32)
    chunk = min(decode_batch, batch)
    decode_chunk = nnx.jit(lambda m, c: m.decode(c))

    def decode(codes: jax.Array) -> jax.Array:
        pad = -codes.shape[0] % chunk  # one compiled chunk shape: pad the last chunk
        codes = jnp.pad(codes, ((0, pad), (0, 0), (0, 0), (0, 0)))
        outs = [decode_chunk(rqvae, codes[i:i + chunk]) for i in range(0, codes.shape[0], chunk)]
        return outs[-1]  # blocking on the last chunk waits for all of them (in-order execution)

    def run(i: int) -> tuple[float, float]:
        start = time.perf_counter()
        codes = sample_codes(transformer, codebook, cond, jax.random.key(seed + i), batch=batch, cfg=sampling)
        codes.block_until_ready()
        mid = time.perf_counter()
        decode(codes).block_until_ready()
        return mid - start, time.perf_counter() - mid

    run(-1)  # warm-up: compiles the sampler and the decoder
    iters = max(1, math.ceil(samples / batch))
    ar = dec = 0.0
    for i in range(iters):
        a, d = run(i)
        ar, dec = ar + a, dec + d
    n = iters * batch
    return Result(preset, tuple(transformer.code_shape), batch, n, ar / n, dec / n)


def print_table(results: list[Result]) -> None:
    header = (f"{'preset':<7} {'code shape':<10} {'batch':>6} {'images':>7} {'s/img excl. dec':>16} "
              f"{'s/img incl. dec':>16} {'images/s':>9} {'paper A100':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        shape = "x".join(map(str, r.code_shape))
        paper = PAPER_A100_INCL_DECODE.get(r.batch) if r.preset == "1.4b" and r.code_shape == (8, 8, 4) else None
        print(f"{r.preset:<7} {shape:<10} {r.batch:>6} {r.images:>7} {r.ar_s_per_image:>16.4f} "
              f"{r.total_s_per_image:>16.4f} {1.0 / r.total_s_per_image:>9.1f} "
              f"{'' if paper is None else f'{paper:.3f}':>11}")
    by_key = {(r.preset, r.code_shape, r.batch): r for r in results}
    for (preset, shape, batch), r in by_key.items():
        other = by_key.get((preset, (16, 16, 1), batch))
        if shape == (8, 8, 4) and other is not None:
            paper = PAPER_SPEEDUP_EXCL_DECODE.get(batch)
            note = f" (paper, A100, 1.4B: {paper}x)" if paper else ""
            print(f"{preset} batch {batch}: 8x8x4 is {other.ar_s_per_image / r.ar_s_per_image:.2f}x faster than "
                  f"16x16x1 excluding decoding{note}")
    print("Paper (1.4B, one A100, 8x8x4, incl. decoding): 0.039 / 0.025 / 0.019 s/image at batch 100 / 200 / 500; "
          f"8x8x4 is 4.1x / 5.6x faster than 16x16x1 at batch 100 / 200 (excl. decoding); batch 500 fits only "
          f"for 8x8x4; RQ-VAE decoding about {PAPER_DECODE} s/image.")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--code_shape", nargs="+", default=["8x8x4", "16x16x1"])
    p.add_argument("--batch", type=int, nargs="+", default=[100, 200, 500])
    p.add_argument("--samples", type=int, default=0, help="images per setting (default: one batch each)")
    p.add_argument("--decode_batch", type=int, default=50, help="RQ-VAE decoding chunk size")
    p.add_argument("--d1_layers", choices=("fold", "same"), default="fold",
                   help="D=1 models: fold the depth layers into the spatial stack (official) or keep them")
    p.add_argument("--param_dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry_run", action="store_true", help="build abstract models only; print their sizes")
    a = p.parse_args(argv)

    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
    sampling = SamplingConfig(top_k=a.top_k, top_p=a.top_p)
    results: list[Result] = []
    for text in a.code_shape:
        shape = parse_code_shape(text)
        s1 = stage1_config(a.preset, shape)
        tcfg = transformer_model_config(a.preset, s1, d1_layers=a.d1_layers, param_dtype=a.param_dtype)
        if a.dry_run:
            tf = nnx.eval_shape(lambda tcfg=tcfg: RQTransformer(tcfg, rngs=nnx.Rngs(0)))
            vae = nnx.eval_shape(lambda s1=s1: RQVAE(s1.model, rngs=nnx.Rngs(0)))
            caches = ", ".join(f"batch {b}: {kv_cache_gib(tf, b):.2f} GiB" for b in a.batch)
            print(f"{a.preset} {text}: RQ-Transformer {num_params(tf) / 1e6:.1f}M params "
                  f"({tcfg.spatial_layers} spatial + {tcfg.depth_layers} depth layers, d_model {tcfg.d_model}, "
                  f"K {tcfg.vocab_size}, T {shape[0] * shape[1]}, D {shape[2]}, {tcfg.dtype}/{tcfg.param_dtype}); "
                  f"RQ-VAE {num_params(vae) / 1e6:.1f}M params; KV caches {caches}")
            continue
        transformer = build(RQTransformer, tcfg, a.seed)
        rqvae = build(RQVAE, s1.model, a.seed + 1)
        for b in a.batch:
            r = measure_throughput(transformer, rqvae, preset=a.preset, batch=b, samples=max(a.samples, 1),
                                   decode_batch=a.decode_batch, sampling=sampling, seed=a.seed)
            print(f"  {a.preset} {text} batch {b}: {r.ar_s_per_image:.4f} s/image sampling, "
                  f"{r.decode_s_per_image:.4f} s/image decoding", flush=True)
            results.append(r)
    if results:
        print_table(results)


if __name__ == "__main__":
    main()
