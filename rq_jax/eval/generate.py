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

from rq_jax import sharding
from rq_jax.eval import fid as fid_lib
from rq_jax.eval.image_sets import set_activations, set_statistics
from rq_jax.eval.io import image_files, npz_images, write_pngs
from rq_jax.metrics import Progress
from rq_jax.runs import Stage2Run, load_stage2
from rq_jax.sampling import SamplingConfig, parse_per_depth, sample_codes


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


def check_ref(ref: str, want_features: bool) -> None:
    """Fails fast (before any sampling) on a missing reference or statistics where features are needed."""
    if os.path.isdir(ref):
        image_files(ref)
        return
    if not os.path.isfile(ref) or not ref.endswith(".npz"):
        raise FileNotFoundError(f"--ref {ref!r} is neither an image folder nor an .npz (images or mu/sigma).")
    if npz_images(ref) is None:
        fid_lib.load_statistics(ref)  # a clear error for an .npz that is neither
        if want_features:
            raise ValueError(f"--precision_recall needs reference images, but {ref!r} holds only statistics.")


class _Samples(NamedTuple):
    """What the sampling loop gathers: Inception outputs, the images when kept, devices and time used."""

    pools: np.ndarray  # [N, 2048] float32
    logits: np.ndarray  # [N, 1008] float32
    images: np.ndarray | None  # uint8 [N, H, W, 3] when an .npz is written, else None
    num_devices: int
    seconds: float


def _sample_and_embed(run: Stage2Run, mesh: Mesh, cfg: SamplingConfig, cond_N: np.ndarray, *, num: int, batch: int,
                      seed: int, inc_fn: Callable, save_images: str | None, keep_images: bool,
                      progress_every_s: float) -> _Samples:
    """Samples `num` images in batches of `batch` over the mesh and runs the Inception network on them."""
    ndev = sharding.data_parallel_size(mesh)
    num_batches = -(-num // batch)
    sampler = make_sampler(run, mesh, batch=batch, cfg=cfg)
    bsh = sharding.batch_sharding(mesh)
    cond_pad = np.concatenate([cond_N, np.repeat(cond_N[:1], num_batches * batch - num, axis=0)])
    if save_images:
        os.makedirs(save_images, exist_ok=True)
    all_images = None
    pools, logits = [], []
    devices_used: set = set()
    progress = Progress(num, what="sample", every_s=progress_every_s)
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
        if save_images or keep_images:
            host = np.asarray(images_u8)[:n]
            if keep_images:
                if all_images is None:
                    all_images = np.zeros((num, *host.shape[1:]), np.uint8)
                all_images[i * batch : i * batch + n] = host
            if save_images:
                write_pngs(save_images, host, i * batch)
        progress.update(i * batch + n)
    return _Samples(np.concatenate(pools), np.concatenate(logits), all_images, len(devices_used),
                    time.perf_counter() - t0)


def _reference(ref: str, inc_fn: Callable, batch: int, save_ref_stats: str | None
               ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, float]:
    """(features or None for a statistics file, mu, sigma, seconds) of the reference set."""
    t0 = time.perf_counter()
    feats, _ = set_activations(ref, inc_fn, batch)
    seconds = time.perf_counter() - t0
    mu, sigma = set_statistics(ref, feats)
    if save_ref_stats:
        fid_lib.save_statistics(save_ref_stats, mu, sigma)
    return feats, mu, sigma, seconds


def _scores(ref: tuple, samples: _Samples, *, num: int, is_splits: int, precision_recall: bool, pr_k: int
            ) -> dict[str, Any]:
    """FID against the reference (features or statistics), IS and optionally precision/recall."""
    ref_feats, ref_mu, ref_sigma, _ = ref
    fake = samples.pools
    result: dict[str, Any] = {}
    if ref_feats is not None:
        result["num_ref"] = int(ref_feats.shape[0])
        result["fid"] = fid_lib.frechet_distance_from_features(ref_feats, fake)
    else:
        result["fid"] = fid_lib.frechet_distance_to_statistics(fake, ref_mu, ref_sigma)
    splits = max(1, min(is_splits, num // 2))
    result["inception_score"], result["inception_score_std"] = fid_lib.inception_score(samples.logits, splits)
    result["inception_score_splits"] = splits
    if precision_recall:
        result["precision"], result["recall"] = fid_lib.precision_recall(ref_feats, fake, k=pr_k)
        result["precision_recall_k"] = pr_k
    if num < 50000:
        result["note"] = f"{num} samples: FID/IS are only comparable to others at the same N (papers use 50k)"
    return result


def _save_npz(path: str, images_u8: np.ndarray, labels: np.ndarray | None) -> None:
    """ADM's sample-batch layout: arr_0 the uint8 images, arr_1 the class labels (class models only)."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    extra = {"arr_1": labels} if labels is not None else {}
    with open(path, "wb") as f:  # a file object keeps np.savez from appending ".npz"
        np.savez(f, arr_0=images_u8, **extra)


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
    from rq_jax.models.inception import load_inception

    if num < 2:
        raise ValueError(f"--num must be at least 2 (a covariance needs two samples), got {num}.")
    check_ref(ref, precision_recall)
    prompts = read_prompts(prompts_file) if prompts_file else None
    inception = load_inception(inception_path)
    run = load_stage2(workdir, step, rqvae)
    cfg = sampling_config_for(run.config, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
    cfg.per_depth(run.model.code_shape[2])  # validates the values before compiling
    cond_N, cond_info = conditions(run, num, num_classes=num_classes, prompts=prompts, workdir=workdir)

    mesh = sharding.mesh_from_config({"data": -1})
    ndev = sharding.data_parallel_size(mesh)
    batch = -(-max(1, batch_size) // ndev) * ndev
    inc_fn = make_inception_fn(inception, mesh)
    reference = _reference(ref, inc_fn, batch, save_ref_stats)
    print(f"generate: {num} samples of {workdir} (step {run.step}) in {-(-num // batch)} batches of {batch} over "
          f"{ndev} device(s) ({jax.devices()[0].platform}); {cfg}", file=sys.stderr, flush=True)
    placeholder = np.zeros((num,), np.int32)  # a condition the unconditional sampler ignores
    samples = _sample_and_embed(run, mesh, cfg, placeholder if cond_N is None else cond_N, num=num, batch=batch,
                                seed=seed, inc_fn=inc_fn, save_images=save_images, keep_images=bool(save_npz),
                                progress_every_s=progress_every_s)
    result: dict[str, Any] = {
        "workdir": workdir, "step": run.step, "rqvae_workdir": run.rqvae_workdir, "num_samples": num, "seed": seed,
        "batch_size": batch, "num_devices": samples.num_devices, "platform": jax.devices()[0].platform,
        "sampling": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        **cond_info,
        "ref": ref, "inception": inception_path,
        "sample_seconds": samples.seconds, "samples_per_second": num / max(samples.seconds, 1e-9),
        "ref_seconds": reference[3],
    }
    result.update(_scores(reference, samples, num=num, is_splits=is_splits, precision_recall=precision_recall,
                          pr_k=pr_k))
    if save_npz:
        _save_npz(save_npz, samples.images, cond_N if cond_info["cond"] == "class" else None)
        result["samples_npz"] = save_npz
    if save_images:
        result["samples_dir"] = save_images
    return result


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
