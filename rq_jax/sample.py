"""`python -m rq_jax.sample --workdir STAGE2_RUN [--classes 0,1,2] --out samples.png`.

Samples codes from a trained RQ-Transformer with one compiled, KV-cached loop and decodes them with
the stage-1 RQ-VAE recorded in the run's config. Writes a PNG grid (one row per class) and an .npz
beside it with the codes and the images. Seedable and reproducible: the same --seed gives the same
images. Top-k / top-p / temperature take one value or one per depth ("512,256,128,64").
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

from rq_jax import cli

if __name__ == "__main__":  # before JAX starts: may re-execute on tcmalloc (rq_jax/allocator.py)
    cli.preload_allocator()

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax import metrics
from rq_jax.cli import UsageError
from rq_jax.data.transforms import to_uint8
from rq_jax.models.abstract import compile_module_fn
from rq_jax.models.weight_dtype import WEIGHT_DTYPES, with_weight_dtype
from rq_jax.sampling import SamplingConfig, compile_sampler, parse_per_depth


def data_num_classes(config, default: int) -> int:
    """The number of classes of the run's feature set (its meta.json), which may be fewer than the model's
    class ids (the demo's model has 10, for the digits; the emoji have 9); `default` when it is not there."""
    path = os.path.join(str(config.data.get("features_dir", "")), "meta.json")
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return min(int(json.load(f).get("num_classes", default)), default)


def class_rows(args: argparse.Namespace, config) -> list[int]:
    """The class id of every grid row: --classes (ids or 'all'), else the first 8; checked against the model."""
    num_classes = int(config.model.num_classes)
    if args.classes == "all":
        return list(range(data_num_classes(config, num_classes)))
    try:
        classes = [int(c) for c in args.classes.split(",")] if args.classes else list(range(min(num_classes, 8)))
    except ValueError:
        raise UsageError(f"--classes takes comma-separated class ids or 'all', got {args.classes!r}.") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UsageError(f"Class ids {bad} are out of range: this model has classes 0..{num_classes - 1}.")
    return classes


def conditions(args: argparse.Namespace, model, config) -> tuple[jax.Array | None, int]:
    """(the condition of every sample, the number of grid rows) for the model's kind of conditioning."""
    n = args.num
    if model.cond_kind == "class":
        if args.prompt:
            raise UsageError("This model is class-conditional: give --classes instead of --prompt.")
        classes = class_rows(args, config)
        return jnp.asarray(np.repeat(classes, n), jnp.int32), len(classes)
    if model.cond_kind == "none":
        if args.classes or args.prompt:
            raise UsageError("This model is unconditional: drop --classes and --prompt.")
        return None, 1
    from rq_jax.text import encode_texts, load_tokenizer

    if args.classes:
        raise UsageError("This model is text-conditioned: give --prompt TEXT (repeatable) instead of --classes.")
    prompts = args.prompt or ["red apple"]
    tok = load_tokenizer(os.path.join(args.workdir, "tokenizer.json"))
    tokens = encode_texts(tok, prompts, int(config.model.text_len), strict=True)
    return jnp.asarray(np.repeat(tokens, n, axis=0)), len(prompts)


def _per_depth(flag: str, text: str, kind: type) -> tuple:
    try:
        value = parse_per_depth(text, kind)
    except (ValueError, IndexError):
        raise UsageError(f"{flag} takes a number or one per depth ('512,256,128,64'), got {text!r}.") from None
    return value if isinstance(value, tuple) else (value,)


def sampling_config(args: argparse.Namespace, config) -> SamplingConfig:
    """The run's config.sample with the command line's overrides, each checked (one sentence per mistake)."""
    vocab = int(config.model.vocab_size)
    checks = (("--top_k", args.top_k, int, lambda v: 0 <= v <= vocab, f"in [0, {vocab}] (0: no top-k; K = {vocab})"),
              ("--top_p", args.top_p, float, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
              ("--temperature", args.temperature, float, lambda v: v > 0, "> 0"))
    for flag, text, kind, ok, what in checks:
        if text is not None:
            bad = [v for v in _per_depth(flag, text, kind) if not ok(v)]
            if bad:
                raise UsageError(f"{flag} must be {what}, got {text}.")
    if args.cfg_scale is not None and args.cfg_scale < 0:
        raise UsageError(f"--cfg_scale must be >= 0, got {args.cfg_scale}.")
    return SamplingConfig(
        temperature=parse_per_depth(args.temperature, float) if args.temperature else config.sample.temperature,
        top_k=parse_per_depth(args.top_k, int) if args.top_k is not None else config.sample.top_k,
        top_p=parse_per_depth(args.top_p, float) if args.top_p is not None else config.sample.top_p,
        cfg_scale=args.cfg_scale if args.cfg_scale is not None else config.sample.cfg_scale,
    )


def _decode(model, codes):
    return model.decode(codes)


def compile_programs(plan, cond, batch: int, cfg: SamplingConfig, weight_dtype: str) -> tuple[Future, Future]:
    """Futures of the sampler and the decoder, compiled one after the other in a thread from the plan's
    abstract models, so compiling overlaps the work of the main thread.

    XLA compiles with the GIL released. The sampler compiles while the main thread reads the checkpoints,
    the decoder mostly while the sampler runs (which waits on memory more than on the cores); on 2 cores
    this order started ~1-2 s sooner than compiling both at once during the load (benchmarks/RESULTS.md).
    With a warm compilation cache the thread traces and reads the programs instead. Each future's result
    is called with the loaded model; errors in tracing (a bad sampling setting) surface from `.result()`.
    """
    model = with_weight_dtype(plan.model, weight_dtype)
    codebook = plan.decoder.codebook_state.embedding_KxC
    codes = jax.ShapeDtypeStruct((batch, *model.code_shape), jnp.int32)
    pool = ThreadPoolExecutor(1, thread_name_prefix="compile")
    futures = (pool.submit(compile_sampler, model, codebook, cond, batch=batch, cfg=cfg),
               pool.submit(compile_module_fn, plan.decoder, _decode, codes))  # weights as arguments, not constants
    pool.shutdown(wait=False)  # the thread ends with the second compile
    return futures


def run(args: argparse.Namespace) -> dict[str, np.ndarray]:
    from rq_jax.runs import load_rq_transformer, load_rqvae, load_rqvae_codebook, plan_stage2

    if args.num < 1:
        raise UsageError(f"--num must be at least 1 (samples per row), got {args.num}.")
    start = time.perf_counter()
    plan = plan_stage2(args.workdir, args.rqvae)  # configs and abstract models; checks the two stages match
    cfg = sampling_config(args, plan.config)
    cond, rows = conditions(args, plan.model, plan.config)
    n = args.num
    sampler, decoder_fn = compile_programs(plan, cond, rows * n, cfg, args.weight_dtype)
    try:
        model, _, step = load_rq_transformer(plan.workdir, args.step, abstract=plan.model)
        codebook, rqvae_step = load_rqvae_codebook(plan.rqvae_workdir, abstract=plan.decoder)
    except BaseException:
        decoder_fn.cancel()  # a failed load (a missing step, a corrupt file) need not wait for both compiles
        raise
    model = with_weight_dtype(model, args.weight_dtype)
    loaded = time.perf_counter()
    codes = sampler.result()(model, codebook, cond, jax.random.key(args.seed))  # dispatched, runs in the background
    decoder, _, _ = load_rqvae(plan.rqvae_workdir, rqvae_step, abstract=plan.decoder)  # read while it samples
    codes = jax.block_until_ready(codes)
    sampled = time.perf_counter()
    images = np.asarray(decoder_fn.result()(decoder, codes))
    decoded = time.perf_counter()
    grid = metrics.image_grid(list(images.reshape(rows, n, *images.shape[1:])))
    metrics.save_png(args.out, grid, upscale=max(1, 64 // images.shape[1]))
    out = dict(codes=np.asarray(codes), images=to_uint8(images),
               cond=np.asarray(cond) if cond is not None else np.zeros((0,), np.int32))
    np.savez(os.path.splitext(args.out)[0] + ".npz", **out)
    print(f"time: load {loaded - start:.1f} s, sample {sampled - loaded:.1f} s, decode {decoded - sampled:.1f} s "
          "(the programs compile while the weights load, and the decoder loads while the sampler runs)")
    print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.npz ({rows * n} samples, stage-2 step {step})")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rq_jax.sample", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="the stage-2 (rq_transformer) training run")
    p.add_argument("--rqvae", default=None, help="the stage-1 run (default: the one in the stage-2 config)")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--classes", default="", help="comma-separated class ids, one grid row each, or 'all' (every "
                   "class of the run's feature set); default: the first 8")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable), text models")
    p.add_argument("--num", type=int, default=8, help="samples per class")
    p.add_argument("--top_k", default=None, help="keep the k most likely codes (0: all); one or one per depth")
    p.add_argument("--top_p", default=None, help="nucleus mass in (0, 1]; one or one per depth")
    p.add_argument("--temperature", default=None, help="> 0; one or one per depth")
    p.add_argument("--cfg_scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight_dtype", default="float32", choices=WEIGHT_DTYPES,
                   help="the transformer's matmul weights: bfloat16 halves their memory (float32 accumulation; "
                   "benchmarks/RESULTS.md has its speed and cost)")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    cli.run(main)  # user errors: one line, exit 1 (2 for bad arguments)
