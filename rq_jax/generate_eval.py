"""`python -m rq_jax.evaluate generate`: N samples of a stage-2 run, then FID / IS (/ precision, recall).

The paper's protocol by default (as ADM's and the official RQ-Transformer evaluation): 50,000 samples;
class-conditional runs balanced over the classes (sample i gets class i mod C, so N / C each); the
run's `config.sample` temperature / top-k / top-p / classifier-free guidance unless a flag overrides
them; text-conditional runs cycle through the prompts of a file (one per line). The codes are decoded
by the stage-1 decoder, rounded to uint8 as saved images would be, and fed to the FID Inception-v3;
FID and IS are computed against `--ref`: an image folder, an `.npz` of uint8 images (`arr_0` or
`images`) or an `.npz` of statistics (`mu`, `sigma`: pytorch-fid's and ADM's reference files).

Sampling is data parallel over every device: a mesh over `jax.devices()` (rq_jax.sharding), each
device sampling batch / devices images with its own key under `shard_map`, decoding them and running
the Inception network where they are. A batch size the device count does not divide is rounded up;
the last batch is padded and the padding dropped. The samples are a function of the seed, the batch
size and the device count: the same three give the same images. One process (one host) only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rq_jax import fid as fid_lib
from rq_jax import sharding
from rq_jax.sampling import SamplingConfig, parse_per_depth, sample_codes


class Stage2Run(NamedTuple):
    """A trained stage-2 model with the stage-1 model that decodes its codes."""

    model: Any  # RQTransformer
    config: ml_collections.ConfigDict
    step: int
    decoder: Any  # RQVAE
    rqvae_workdir: str
    meta: dict  # the feature directory's meta.json ({} when unavailable, e.g. converted checkpoints)


def load_stage2(workdir: str, step: int | None = None, rqvae: str | None = None) -> Stage2Run:
    """The RQ-Transformer of a stage-2 run and the RQ-VAE of its stage-1 run (checked to match)."""
    from rq_jax.data.features import load_meta
    from rq_jax.trainers.rq_transformer import load_rq_transformer
    from rq_jax.trainers.rqvae import load_rqvae

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"The workdir {workdir!r} does not exist; give the --workdir of a stage-2 run.")
    model, config, step = load_rq_transformer(workdir, step)
    meta: dict = {}
    features_dir = config.get("data", {}).get("features_dir", "")
    if features_dir and os.path.exists(os.path.join(features_dir, "meta.json")):
        meta = load_meta(features_dir)
    rqvae_dir = rqvae or config.get("rqvae_workdir") or meta.get("rqvae_workdir")
    if not rqvae_dir:
        raise FileNotFoundError(f"The stage-2 run {workdir} names no stage-1 run; pass it with --rqvae.")
    decoder, rq_config, _ = load_rqvae(rqvae_dir)
    if tuple(rq_config.model.code_shape) != tuple(model.code_shape) or \
            int(rq_config.model.codebook_size) != model.vocab_size:
        raise ValueError(
            f"The RQ-VAE in {rqvae_dir} has code shape {tuple(rq_config.model.code_shape)} and K="
            f"{rq_config.model.codebook_size}, but the transformer expects {model.code_shape} and K={model.vocab_size};"
            " pass the stage-1 run it was trained on with --rqvae."
        )
    return Stage2Run(model, config, int(step), decoder, rqvae_dir, meta)


def sampling_config_for(config: ml_collections.ConfigDict, *, temperature: str | float | None = None,
                        top_k: str | int | None = None, top_p: str | float | None = None,
                        cfg_scale: float | None = None) -> SamplingConfig:
    """The run's `config.sample`, with each given value (a number or "v1,v2,..." per depth) replacing its own."""
    s = config.sample
    return SamplingConfig(
        temperature=parse_per_depth(temperature, float) if temperature is not None else _tuple(s.temperature),
        top_k=parse_per_depth(top_k, int) if top_k is not None else _tuple(s.top_k),
        top_p=parse_per_depth(top_p, float) if top_p is not None else _tuple(s.top_p),
        cfg_scale=float(cfg_scale) if cfg_scale is not None else float(s.cfg_scale),
    )


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v  # JSON configs give lists: hashable for jit


def balanced_classes(num: int, num_classes: int) -> np.ndarray:
    """int32 [num]: sample i gets class i mod C (N / C per class; the first N mod C classes get one more)."""
    if num_classes < 1:
        raise ValueError(f"Balanced class sampling needs at least one class, got {num_classes}.")
    return (np.arange(num) % num_classes).astype(np.int32)


def read_prompts(path: str) -> list[str]:
    """The non-empty lines of a text file, stripped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The prompts file {path!r} does not exist (one prompt per line).")
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"The prompts file {path!r} holds no prompts.")
    return prompts


def conditions(run: Stage2Run, num: int, *, num_classes: int | None = None, prompts: list[str] | None = None,
               workdir: str = "") -> tuple[np.ndarray | None, dict[str, Any]]:
    """(cond [num] class ids or [num, L] tokens, or None; a summary for the JSON) of the protocol."""
    kind = run.model.cond_kind
    if kind == "class":
        if prompts:
            raise ValueError("This model is class-conditional: drop --prompts.")
        model_classes = int(run.config.model.num_classes)
        c = int(num_classes or run.meta.get("num_classes") or model_classes)
        if not 1 <= c <= model_classes:
            raise ValueError(f"--num_classes {c} is out of range: the model has {model_classes} classes.")
        labels = balanced_classes(num, c)
        return labels, {"cond": "class", "num_classes": c,
                        "class_counts": [int(v) for v in np.bincount(labels, minlength=c)]}
    if kind == "none":
        if prompts or num_classes:
            raise ValueError("This model is unconditional: drop --prompts / --num_classes.")
        return None, {"cond": "none"}
    from rq_jax.text import encode_texts, load_tokenizer

    if not prompts:
        raise ValueError("This model is text-conditioned: give --prompts FILE (one prompt per line).")
    tok = load_tokenizer(os.path.join(workdir, "tokenizer.json"))
    tokens = encode_texts(tok, prompts, int(run.config.model.text_len))  # long prompts are truncated
    return tokens[np.arange(num) % len(prompts)], {"cond": "text", "num_prompts": len(prompts)}


def _replicate(module: nnx.Module, mesh: Mesh) -> tuple[Any, Any]:
    graph, state = nnx.split(module)
    return graph, jax.device_put(state, sharding.replicated(mesh))


def make_sampler(run: Stage2Run, mesh: Mesh, *, batch: int, cfg: SamplingConfig
                 ) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """fn(cond [batch, ...] or dummy [batch], keys [devices]) -> (codes [batch, h, w, D], uint8 images).

    Each device samples batch / devices images with its own key and decodes them (`shard_map`); the
    outputs stay sharded over the batch axes of `mesh`.
    """
    axes = sharding.batch_axes(mesh)
    per_device = batch // sharding.data_parallel_size(mesh)
    graph_m, state_m = _replicate(run.model, mesh)
    graph_d, state_d = _replicate(run.decoder, mesh)
    unconditional = run.model.cond_kind == "none"

    def local(state_m, state_d, cond, keys):
        model, decoder = nnx.merge(graph_m, state_m), nnx.merge(graph_d, state_d)
        codebook_KxC = decoder.codebook_state.embedding_KxC
        codes = sample_codes(model, codebook_KxC, None if unconditional else cond, keys[0], batch=per_device,
                             cfg=cfg)
        images = decoder.decode(codes)
        return codes, jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axes), P(axes)),
                               out_specs=(P(axes), P(axes)), check_vma=False))
    return lambda cond, keys: fn(state_m, state_d, cond, keys)


def make_inception_fn(inception: nnx.Module, mesh: Mesh) -> Callable[[Any], Any]:
    """fn(images [B, H, W, 3]: uint8, or float in [-1, 1]) -> InceptionOutput, sharded over the batch.

    Device arrays are used where they are; host arrays are padded to a multiple of the device count,
    placed over the mesh, and the outputs returned as numpy without the padding.
    """
    graph, state = _replicate(inception, mesh)
    ndev = sharding.data_parallel_size(mesh)
    bsh = sharding.batch_sharding(mesh)

    def apply(state, x):
        x = x.astype(jnp.float32) / 127.5 - 1.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        return nnx.merge(graph, state)(x)

    jitted = jax.jit(apply)

    def fn(x):
        on_mesh = isinstance(x, jax.Array) and len(x.sharding.device_set) == ndev
        if on_mesh or ndev == 1:
            return jitted(state, jnp.asarray(x))  # already over the mesh (the sampler's output), or one device
        x = np.asarray(x)
        n = x.shape[0]
        padded = np.concatenate([x, np.zeros((-n % ndev, *x.shape[1:]), x.dtype)])
        out = jitted(state, jax.device_put(padded, bsh))
        return type(out)(*(np.asarray(o)[:n] for o in out))

    return fn


def _check_ref(ref: str, want_features: bool) -> None:
    """Fails fast (before any sampling) on a missing reference or statistics where features are needed."""
    from rq_jax.evaluate import _image_files, _npz_images

    if os.path.isdir(ref):
        _image_files(ref)
        return
    if not os.path.isfile(ref) or not ref.endswith(".npz"):
        raise FileNotFoundError(f"--ref {ref!r} is neither an image folder nor an .npz (images or mu/sigma).")
    if _npz_images(ref) is None:
        fid_lib.load_statistics(ref)  # a clear error for an .npz that is neither
        if want_features:
            raise ValueError(f"--precision_recall needs reference images, but {ref!r} holds only statistics.")


def generate_and_evaluate(
    workdir: str,
    *,
    ref: str,
    inception_path: str,
    num: int = 50000,
    batch_size: int = 256,
    seed: int = 0,
    step: int | None = None,
    rqvae: str | None = None,
    temperature: str | None = None,
    top_k: str | None = None,
    top_p: str | None = None,
    cfg_scale: float | None = None,
    num_classes: int | None = None,
    prompts_file: str | None = None,
    save_images: str | None = None,
    save_npz: str | None = None,
    save_ref_stats: str | None = None,
    precision_recall: bool = False,
    pr_k: int = 3,
    is_splits: int = 10,
    progress_every_s: float = 10.0,
) -> dict[str, Any]:
    """Samples `num` images from a stage-2 run and scores them against `ref` (see the module docstring)."""
    from rq_jax.evaluate import _Progress, _set_activations
    from rq_jax.models.inception import load_inception

    if num < 2:
        raise ValueError(f"--num must be at least 2 (a covariance needs two samples), got {num}.")
    _check_ref(ref, precision_recall)
    prompts = read_prompts(prompts_file) if prompts_file else None
    inception = load_inception(inception_path)
    run = load_stage2(workdir, step, rqvae)
    cfg = sampling_config_for(run.config, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
    cfg.per_depth(run.model.code_shape[2])  # validates the values before compiling
    cond_N, cond_info = conditions(run, num, num_classes=num_classes, prompts=prompts, workdir=workdir)

    mesh = sharding.mesh_from_config({"data": -1})
    ndev = sharding.data_parallel_size(mesh)
    batch = -(-max(1, batch_size) // ndev) * ndev
    num_batches = -(-num // batch)
    inc_fn = make_inception_fn(inception, mesh)
    t0 = time.perf_counter()
    ref_feats, _ = _set_activations(ref, inc_fn, batch)
    ref_seconds = time.perf_counter() - t0
    if ref_feats is None:
        ref_mu, ref_sigma = fid_lib.load_statistics(ref)
    else:
        ref_mu, ref_sigma = fid_lib.activation_statistics(ref_feats)
    if save_ref_stats:
        fid_lib.save_statistics(save_ref_stats, ref_mu, ref_sigma)

    sampler = make_sampler(run, mesh, batch=batch, cfg=cfg)
    bsh = sharding.batch_sharding(mesh)
    if cond_N is None:
        cond_N = np.zeros((num,), np.int32)  # a placeholder the unconditional sampler ignores
    cond_pad = np.concatenate([cond_N, np.repeat(cond_N[:1], num_batches * batch - num, axis=0)])
    print(f"generate: {num} samples of {workdir} (step {run.step}) in {num_batches} batches of {batch} over "
          f"{ndev} device(s) ({jax.devices()[0].platform}); {cfg}", file=sys.stderr, flush=True)
    if save_images:
        os.makedirs(save_images, exist_ok=True)
    all_images = None
    pools, logits = [], []
    devices_used: set = set()
    progress = _Progress(num, "sample", every_s=progress_every_s)
    t0 = time.perf_counter()
    for i in range(num_batches):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), i), ndev)
        cond = jax.device_put(cond_pad[i * batch : (i + 1) * batch], bsh)
        _, images_u8 = sampler(cond, jax.device_put(keys, bsh))
        out = inc_fn(images_u8)
        devices_used |= set(images_u8.sharding.device_set)
        n = min(batch, num - i * batch)
        pools.append(np.asarray(out.pool, np.float32)[:n])
        logits.append(np.asarray(out.logits_unbiased, np.float32)[:n])
        if save_images or save_npz:
            host = np.asarray(images_u8)[:n]
            if save_npz:
                if all_images is None:
                    all_images = np.zeros((num, *host.shape[1:]), np.uint8)
                all_images[i * batch : i * batch + n] = host
            if save_images:
                _write_pngs(save_images, host, i * batch)
        progress.update(i * batch + n)
    sample_seconds = time.perf_counter() - t0

    fake = np.concatenate(pools)
    result: dict[str, Any] = {
        "workdir": workdir, "step": run.step, "rqvae_workdir": run.rqvae_workdir, "num_samples": num, "seed": seed,
        "batch_size": batch, "num_devices": len(devices_used), "platform": jax.devices()[0].platform,
        "sampling": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        **cond_info,
        "ref": ref, "inception": inception_path,
        "sample_seconds": sample_seconds, "samples_per_second": num / max(sample_seconds, 1e-9),
        "ref_seconds": ref_seconds,
    }
    if ref_feats is not None:
        result["num_ref"] = int(ref_feats.shape[0])
        result["fid"] = fid_lib.frechet_distance_from_features(ref_feats, fake)
    else:
        result["fid"] = fid_lib.frechet_distance_to_statistics(fake, ref_mu, ref_sigma)
    splits = max(1, min(is_splits, num // 2))
    result["inception_score"], result["inception_score_std"] = fid_lib.inception_score(np.concatenate(logits), splits)
    result["inception_score_splits"] = splits
    if precision_recall:
        result["precision"], result["recall"] = fid_lib.precision_recall(ref_feats, fake, k=pr_k)
        result["precision_recall_k"] = pr_k
    if num < 50000:
        result["note"] = f"{num} samples: FID/IS are only comparable to others at the same N (papers use 50k)"
    if save_npz:
        folder = os.path.dirname(save_npz)
        if folder:
            os.makedirs(folder, exist_ok=True)
        extra = {"arr_1": cond_N} if cond_info["cond"] == "class" else {}
        with open(save_npz, "wb") as f:  # ADM's sample-batch layout: arr_0 images, arr_1 labels
            np.savez(f, arr_0=all_images, **extra)
        result["samples_npz"] = save_npz
    if save_images:
        result["samples_dir"] = save_images
    return result


def _write_pngs(folder: str, images_u8: np.ndarray, start: int) -> None:
    from PIL import Image

    for j, image in enumerate(images_u8):
        Image.fromarray(image).save(os.path.join(folder, f"{start + j:06d}.png"))


def format_report(result: dict[str, Any]) -> str:
    """A few lines: FID, IS, precision/recall, throughput."""
    lines = [f"{result['num_samples']} samples (step {result['step']}, {result['num_devices']} device(s), "
             f"{result['samples_per_second']:.2f} samples/s) vs {result['ref']}",
             f"FID {result['fid']:.4f}",
             f"IS  {result['inception_score']:.4f} +- {result['inception_score_std']:.4f} "
             f"({result['inception_score_splits']} splits)"]
    if "precision" in result:
        lines.append(f"precision {result['precision']:.4f} | recall {result['recall']:.4f} "
                     f"(k={result['precision_recall_k']})")
    if "note" in result:
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)


def run_cli(args: argparse.Namespace) -> None:
    """The `generate` subcommand: runs, prints the report and writes the JSON."""
    from rq_jax.evaluate import _write_json

    result = generate_and_evaluate(
        args.workdir, ref=args.ref, inception_path=args.inception, num=args.num, batch_size=args.batch_size,
        seed=args.seed, step=args.step, rqvae=args.rqvae, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, cfg_scale=args.cfg_scale, num_classes=args.num_classes, prompts_file=args.prompts,
        save_images=args.save_images, save_npz=args.save_npz, save_ref_stats=args.save_ref_stats,
        precision_recall=args.precision_recall, pr_k=args.pr_k, is_splits=args.is_splits,
    )
    out = args.out or os.path.join(args.workdir, f"generate_metrics_{result['step']}_{result['num_samples']}.json")
    _write_json(out, result)
    print(format_report(result))
    print(f"wrote {out}")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds the `generate` subcommand to `python -m rq_jax.evaluate`'s subparsers."""
    g = sub.add_parser("generate", help="sample N images from a stage-2 run (sharded over all devices), FID/IS")
    g.add_argument("--workdir", required=True, help="stage-2 run directory (trained or converted)")
    g.add_argument("--ref", required=True, help="reference: image folder, image .npz (arr_0) or statistics .npz "
                   "(mu, sigma: pytorch-fid's / ADM's files)")
    g.add_argument("--inception", required=True, help="Inception weights (.npz from python -m rq_jax.convert "
                   "inception)")
    g.add_argument("--num", type=int, default=50000, help="number of samples (the paper: 50000)")
    g.add_argument("--batch_size", type=int, default=256, help="samples per step over all devices (rounded up "
                   "to a multiple of the device count)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--step", type=int, default=None, help="stage-2 checkpoint step (default: the latest)")
    g.add_argument("--rqvae", default=None, help="the stage-1 run (default: the one in the stage-2 config)")
    g.add_argument("--top_k", default=None, help="default: the run's config.sample.top_k; one value or per depth")
    g.add_argument("--top_p", default=None, help="default: config.sample.top_p")
    g.add_argument("--temperature", default=None, help="default: config.sample.temperature")
    g.add_argument("--cfg_scale", type=float, default=None, help="default: config.sample.cfg_scale")
    g.add_argument("--num_classes", type=int, default=None, help="class models: balance over classes "
                   "0..C-1 (default: the dataset's classes from the features' meta.json, else the model's)")
    g.add_argument("--prompts", default=None, help="text models: a file with one prompt per line (cycled)")
    g.add_argument("--save_images", default=None, help="also write every sample as DIR/NNNNNN.png")
    g.add_argument("--save_npz", default=None, help="also write the samples as an .npz (arr_0 uint8 images, "
                   "arr_1 labels: ADM's layout; all N images are held in memory)")
    g.add_argument("--save_ref_stats", default=None, help="write the reference's mu/sigma to this .npz")
    g.add_argument("--precision_recall", action="store_true", help="also improved precision/recall (needs "
                   "reference images, not statistics)")
    g.add_argument("--pr_k", type=int, default=3, help="k of the precision/recall k-NN radii")
    g.add_argument("--is_splits", type=int, default=10)
    g.add_argument("--out", default=None, help="JSON output (default: <workdir>/generate_metrics_<step>_<N>.json)")
    g.set_defaults(run=run_cli)
    return g
