"""`python -m rq_jax.evaluate`: reconstruction metrics of an RQ-VAE run, reconstructions as PNGs, FID/IS.

  recon        --workdir RUN [--step N] [--num_batches N] [--batch_size B] [--lpips PATH] [--inception PATH]
               [--out JSON]: over the run's held-out split (its config.data): PSNR, SSIM, LPIPS (with
               --lpips), PSNR per decoding depth (coarse-to-fine), codebook perplexity/usage/dead codes
               per depth, and rFID (with --inception: Inception features of inputs vs reconstructions).
               Prints a table and writes JSON (default <workdir>/recon_metrics_<step>.json).
  reconstruct  --workdir RUN [--num N] --out DIR: per image, input | reconstruction | depth 1..D as one PNG,
               and one grid (rows: inputs, then the depth-1..D reconstructions).
  fid          --real DIR_OR_NPZ --fake DIR_OR_NPZ --inception PATH: FID between two image sets, each an
               image folder, an `.npz` of uint8 images [N, H, W, 3] (`arr_0` or `images`) or an `.npz` of
               statistics (`mu`, `sigma`: pytorch-fid's and ADM's format); and the Inception Score of the
               fake set when it is images.

  generate     --workdir STAGE2_RUN --ref DIR_OR_NPZ --inception PATH [--num 50000] [--batch_size B]
               [--top_k/--top_p/--temperature/--cfg_scale] [--prompts FILE] [--save_images DIR] [--save_npz F]
               [--precision_recall] [--out JSON]: samples N images (classes balanced, the run's sampling
               settings; sharded over all devices), decodes them and reports FID, IS and optionally
               improved precision/recall against --ref (see rq_jax/generate_eval.py).
  judge        --samples S.npz --data_config CONFIG.py [--judge PATH] [--steps N] [--out JSON]: judges the
               conditional samples of `python -m rq_jax.sample` (`images`, `cond`) with a small CNN trained
               on the real data of the config's `data` section (trained and cached at --judge when missing,
               see rq_jax/judge.py): the fraction classified as their requested class vs chance, per class,
               and a "demo FID" on the judge's penultimate 128-d features, with a real-validation floor.

Weights are read from local files written by `python -m rq_jax.convert lpips|inception`. The evaluation
runs in one process and reads the whole split itself (no multi-host sharding).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rq_jax import fid as fid_lib
from rq_jax import metrics

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")  # pytorch-fid's
SSIM_FILTER_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


# ---------------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------------
def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def ssim(x_BHWC: jax.Array, y_BHWC: jax.Array, *, filter_size: int = SSIM_FILTER_SIZE,
         sigma: float = SSIM_SIGMA) -> jax.Array:
    """Per-image SSIM [B] of images in [-1, 1] (Wang et al. 2004, as tf.image.ssim and skimage's Gaussian SSIM).

    Images are mapped to [0, 1] (dynamic range L = 1; SSIM is not shift-invariant, so this matters),
    local statistics are taken under an 11 x 11 Gaussian window (sigma 1.5) over the valid region only,
    with population (not sample) variances, C1 = (0.01 L)^2, C2 = (0.03 L)^2; the SSIM map is averaged
    over pixels and channels.
    """
    if x_BHWC.shape != y_BHWC.shape or x_BHWC.ndim != 4:
        raise ValueError(
            f"SSIM expects two [B, H, W, C] batches of equal shape, got {x_BHWC.shape} and {y_BHWC.shape}."
        )
    b, h, w, c = x_BHWC.shape
    if min(h, w) < filter_size:
        raise ValueError(f"SSIM with an {filter_size}-pixel window needs images of at least that size, got {h}x{w}.")
    x = (x_BHWC.astype(jnp.float32) + 1.0) / 2.0
    y = (y_BHWC.astype(jnp.float32) + 1.0) / 2.0
    # five maps per channel, filtered at once as separate "images": [5*B*C, H, W, 1]
    maps = jnp.stack([x, y, x * x, y * y, x * y])  # [5, B, H, W, C]
    maps = jnp.moveaxis(maps, -1, 2).reshape(-1, h, w, 1)
    win = jnp.asarray(_gaussian_window(filter_size, sigma))
    dn = ("NHWC", "HWIO", "NHWC")
    hi = jax.lax.Precision.HIGHEST
    maps = jax.lax.conv_general_dilated(maps, win.reshape(-1, 1, 1, 1), (1, 1), "VALID", dimension_numbers=dn,
                                        precision=hi)
    maps = jax.lax.conv_general_dilated(maps, win.reshape(1, -1, 1, 1), (1, 1), "VALID", dimension_numbers=dn,
                                        precision=hi)
    mu_x, mu_y, e_xx, e_yy, e_xy = maps.reshape(5, b, c, *maps.shape[1:3])
    var_x, var_y, cov = e_xx - mu_x**2, e_yy - mu_y**2, e_xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------
class _Progress:
    """A progress line with rate and ETA on stderr, at most every `every_s` seconds (and at the end)."""

    def __init__(self, total: int, what: str, every_s: float = 10.0):
        self.total, self.what, self.every_s = total, what, every_s
        self.t0 = self.t_last = time.perf_counter()

    def update(self, done: int, extra: str = "") -> None:
        now = time.perf_counter()
        if now - self.t_last < self.every_s and done < self.total:
            return
        self.t_last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = f"{self.what} {done}/{self.total} | {rate:.2f}/s | ETA {metrics.format_seconds(eta)}"
        print(line + (f" | {extra}" if extra else ""), file=sys.stderr, flush=True)


def _pad_batch(images_BHWC: np.ndarray, batch_size: int) -> np.ndarray:
    """Pads a short last batch with zeros to `batch_size`, so the jitted functions compile once."""
    n = images_BHWC.shape[0]
    if n == batch_size:
        return images_BHWC
    pad = np.zeros((batch_size - n, *images_BHWC.shape[1:]), images_BHWC.dtype)
    return np.concatenate([images_BHWC, pad])


def _jit_module_fn(module: nnx.Module, fn: Callable) -> Callable:
    """jax.jit of `fn(module, *args)` with the module's state as a traced argument (graph static)."""
    graph, state = nnx.split(module)
    jitted = jax.jit(lambda s, *args: fn(nnx.merge(graph, s), *args))
    return lambda *args: jitted(state, *args)


def _held_out_batches(data_config: Any, *, split: str, batch_size: int, num_batches: int | None
                      ) -> tuple[Iterator[tuple[np.ndarray, int]], int, str]:
    """Streams (padded images [B, S, S, 3], number of real images) over a split; also the batch count.

    Unlike `eval_batches` it neither holds the split in memory nor drops the last partial batch.
    """
    from rq_jax.data.pipeline import build_image_dataset

    it, info = build_image_dataset(
        data_config, split=split, batch_size=batch_size, process_index=0, process_count=1,
        shuffle=False, repeat=False, augment=False, drop_remainder=False,
    )
    total = math.ceil(info.num_examples / batch_size)
    if num_batches is not None:
        total = min(total, int(num_batches))
    if info.num_examples == 0 or total <= 0:
        raise ValueError(f"The {info.split} split of {info.description} holds no images to evaluate.")

    def gen():
        for i, batch in enumerate(it):
            if i == total:
                break
            images = np.asarray(batch["image"], np.float32)
            yield _pad_batch(images, batch_size), images.shape[0]

    return gen(), total, f"{info.description}, {info.split} split"


def _load_run(workdir: str, step: int | None):
    from rq_jax.trainers.rqvae import load_rqvae

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"The workdir {workdir!r} does not exist; give the --workdir of a stage-1 run.")
    return load_rqvae(workdir, step)


# ---------------------------------------------------------------------------------------------------
# recon
# ---------------------------------------------------------------------------------------------------
def evaluate_reconstruction(
    workdir: str,
    *,
    step: int | None = None,
    num_batches: int | None = None,
    batch_size: int = 32,
    split: str = "validation",
    lpips_path: str | None = None,
    inception_path: str | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics of a stage-1 run over its held-out split (see the module docstring).

    PSNR (mean of per-image values, peak-to-peak 2), SSIM and LPIPS are taken on the decoder's raw
    output, as the trainer's evaluation does; rFID on the reconstructions clipped to [-1, 1], the
    images one would save.
    """
    from rq_jax.models.inception import load_inception
    from rq_jax.models.lpips import load_lpips
    from rq_jax.quantizer import codebook_usage

    lp = load_lpips(lpips_path) if lpips_path else None  # weights first: a missing file fails before any work
    inc = load_inception(inception_path) if inception_path else None
    model, config, step = _load_run(workdir, step)
    depth = model.depth

    def compute(model, x):
        codes = model.encode(x)
        recons = [model.decode_partial(codes, d) for d in range(1, depth + 1)]
        mse_DxB = jnp.stack([jnp.mean(jnp.square(r - x), axis=(1, 2, 3)) for r in recons])
        return dict(codes=codes, mse=mse_DxB, ssim=ssim(x, recons[-1]), recon=recons[-1])

    rq_fn = _jit_module_fn(model, compute)
    lp_fn = _jit_module_fn(lp, lambda m, x, y: m(x, y)) if lp is not None else None
    inc_fn = _jit_module_fn(inc, lambda m, x: m.features(x)) if inc is not None else None

    batches, total, description = _held_out_batches(config.data, split=split, batch_size=batch_size,
                                                     num_batches=num_batches)
    print(f"evaluating step {step} of {workdir} on {description}: {total} batches of {batch_size}",
          file=sys.stderr, flush=True)
    progress = _Progress(total, "batch")
    mse, ssims, lpips_vals, codes, feats_real, feats_fake, psnr_sum = [], [], [], [], [], [], 0.0
    for i, (x_np, n) in enumerate(batches):
        x = jnp.asarray(x_np)
        out = rq_fn(x)
        if lp_fn is not None:
            lpips_vals.append(np.asarray(lp_fn(x, out["recon"]))[:n])
        if inc_fn is not None:
            feats_real.append(np.asarray(inc_fn(x))[:n])
            feats_fake.append(np.asarray(inc_fn(jnp.clip(out["recon"], -1.0, 1.0)))[:n])  # as saved images
        mse.append(np.asarray(out["mse"], np.float64)[:, :n])
        ssims.append(np.asarray(out["ssim"])[:n])
        codes.append(np.asarray(out["codes"])[:n])
        psnr_sum += float(np.sum(10.0 * np.log10(4.0 / np.maximum(mse[-1][-1], 1e-12))))
        progress.update(i + 1, f"PSNR {psnr_sum / sum(m.shape[1] for m in mse):.2f} dB")

    mse_DxN = np.concatenate(mse, axis=1)
    psnr_DxN = 10.0 * np.log10(4.0 / np.maximum(mse_DxN, 1e-12))  # images in [-1, 1]: peak-to-peak 2
    usage = jax.device_get(codebook_usage(jnp.asarray(np.concatenate(codes)), int(config.model.codebook_size)))
    result: dict[str, Any] = {
        "workdir": workdir,
        "step": int(step),
        "split": split,
        "num_images": int(mse_DxN.shape[1]),
        "psnr": float(psnr_DxN[-1].mean()),
        "ssim": float(np.concatenate(ssims).mean()),
        "psnr_per_depth": [float(v) for v in psnr_DxN.mean(axis=1)],
        "codebook_perplexity": [float(v) for v in usage["perplexity"]],
        "codebook_usage": [float(v) for v in usage["usage"]],
        "codebook_dead": [int(v) for v in usage["dead"]],
        "codebook_size": int(config.model.codebook_size),
    }
    if lp is not None:
        result["lpips"] = float(np.concatenate(lpips_vals).mean())
    if inc is not None:
        real, fake = np.concatenate(feats_real), np.concatenate(feats_fake)
        result["rfid"] = fid_lib.frechet_distance_from_features(real, fake)
        if real.shape[0] < 2 * real.shape[1]:
            result["rfid_note"] = (f"only {real.shape[0]} images for {real.shape[1]}-d features: rFID is biased "
                                   "upwards and only comparable at the same number of images (papers use 50k)")
    return result


def format_recon_table(result: dict[str, Any]) -> str:
    """The metrics as a small text table (scalars, then one row per code depth)."""
    lines = [f"step {result['step']} | {result['num_images']} images of the {result['split']} split"]
    for key, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("rfid", "rFID")):
        if key in result:
            lines.append(f"  {label:<10} {result[key]:.4f}")
    lines.append(f"  {'depth':>5} {'PSNR':>8} {'perplexity':>11} {'usage':>7} {'dead':>6}")
    for d in range(len(result["psnr_per_depth"])):
        lines.append(f"  {d + 1:>5} {result['psnr_per_depth'][d]:>8.2f} {result['codebook_perplexity'][d]:>11.1f} "
                     f"{result['codebook_usage'][d]:>7.3f} {result['codebook_dead'][d]:>6d}")
    if "rfid_note" in result:
        lines.append(f"  note: {result['rfid_note']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# reconstruct
# ---------------------------------------------------------------------------------------------------
def write_reconstructions(workdir: str, out_dir: str, *, num: int = 16, step: int | None = None,
                          split: str = "validation", batch_size: int = 16) -> list[str]:
    """Writes `<out>/recon_{i}.png` (input | reconstruction | depth 1..D) per image and `<out>/grid.png`."""
    model, config, step = _load_run(workdir, step)
    depth = model.depth

    def compute(model, x):
        codes = model.encode(x)
        return jnp.stack([model.decode_partial(codes, d) for d in range(1, depth + 1)])

    fn = _jit_module_fn(model, compute)
    bs = max(1, min(batch_size, num))
    batches, _, _ = _held_out_batches(config.data, split=split, batch_size=bs, num_batches=math.ceil(num / bs))
    inputs, partials = [], []
    for x_np, n in batches:
        partials.append(np.asarray(fn(jnp.asarray(x_np)))[:, :n])
        inputs.append(x_np[:n])
    images = np.concatenate(inputs)[:num]
    partial_DxN = np.concatenate(partials, axis=1)[:, :num]
    upscale = max(1, 128 // images.shape[1])
    paths = []
    for i in range(images.shape[0]):
        panels = np.stack([images[i], partial_DxN[-1, i], *partial_DxN[:, i]])
        paths.append(metrics.save_png(os.path.join(out_dir, f"recon_{i:04d}.png"),
                                      metrics.image_grid([panels]), upscale=upscale))
    grid = metrics.image_grid([images] + list(partial_DxN))
    paths.append(metrics.save_png(os.path.join(out_dir, "grid.png"), grid, upscale=upscale))
    return paths


# ---------------------------------------------------------------------------------------------------
# fid
# ---------------------------------------------------------------------------------------------------
def _image_files(folder: str) -> list[str]:
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"The folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return [os.path.join(folder, f) for f in files]


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), np.uint8)


def inception_activations(
    inception: nnx.Module, images: list[str] | np.ndarray, *, batch_size: int = 50, what: str = "images"
) -> tuple[np.ndarray, np.ndarray]:
    """(pool3 features [N, 2048], unbiased logits [N, 1008]) of image files or a uint8 array [N, H, W, 3].

    Images are read as RGB, mapped to [-1, 1] and resized to 299 by the network (bilinear, as
    pytorch-fid); batches of mixed sizes are resized to 299 one image at a time first.
    """
    return _activations(_jit_module_fn(inception, lambda m, x: m(x)), images, batch_size=batch_size, what=what)


def _activations(fn: Callable, images: list[str] | np.ndarray, *, batch_size: int, what: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`inception_activations` with an already jitted network (compiled once per batch shape)."""
    from rq_jax.models.inception import INCEPTION_SIZE, resize_bilinear

    n = len(images)
    batch_size = min(batch_size, n)
    pools, logits = [], []
    progress = _Progress(n, what)
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        arrays = [_read_image(p) for p in chunk] if isinstance(images, list) else list(chunk)
        if len({a.shape for a in arrays}) > 1:
            arrays = [np.asarray(resize_bilinear(jnp.asarray(a[None], jnp.float32) / 127.5 - 1.0, INCEPTION_SIZE))[0]
                      for a in arrays]
            x = np.stack(arrays)
        else:
            x = np.stack(arrays).astype(np.float32) / 127.5 - 1.0
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"Images must be [N, H, W, 3], got a batch of shape {x.shape}.")
        out = fn(jnp.asarray(_pad_batch(x, batch_size)))
        pools.append(np.asarray(out.pool, np.float64)[: len(arrays)])
        logits.append(np.asarray(out.logits_unbiased, np.float64)[: len(arrays)])
        progress.update(min(start + batch_size, n))
    return np.concatenate(pools), np.concatenate(logits)


def _npz_images(path: str) -> np.ndarray | None:
    """The image array of an `.npz` without FID statistics (ADM reference batches: `arr_0`), else None."""
    with np.load(path) as f:
        if "mu" in f.files and "sigma" in f.files:
            return None
        for key in ("arr_0", "images"):
            if key in f.files and f[key].ndim == 4 and f[key].shape[-1] == 3:
                arr = f[key]
                if arr.dtype != np.uint8:
                    raise ValueError(f"{path!r}: the images in {key!r} are {arr.dtype}, expected uint8 in [0, 255].")
                return arr
    return None


def _set_activations(path: str, fn: Callable, batch_size: int):
    """(features, logits) of a folder or an image `.npz`; (None, None) when `path` holds statistics."""
    if os.path.isdir(path):
        return _activations(fn, _image_files(path), batch_size=batch_size, what=path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} is neither an image folder nor an .npz file.")
    if not path.endswith(".npz"):
        raise ValueError(f"{path!r} is not a folder of images or an .npz statistics file.")
    images = _npz_images(path)
    if images is None:
        return None, None
    return _activations(fn, images, batch_size=batch_size, what=path)


def compute_fid(real: str, fake: str, inception_path: str, *, batch_size: int = 50, is_splits: int = 10,
                save_real_stats: str | None = None) -> dict[str, Any]:
    """FID between two image sets (folders, image `.npz`, or statistics `.npz`), IS of the fake set.

    The IS uses `is_splits` chunks, fewer when the fake set has under two images per chunk.
    """
    from rq_jax.models.inception import load_inception

    for p in (real, fake):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p!r} does not exist: give an image folder or an .npz statistics file.")
    fn = _jit_module_fn(load_inception(inception_path), lambda m, x: m(x))
    result: dict[str, Any] = {"real": real, "fake": fake}
    sets = {}
    for name, path in (("real", real), ("fake", fake)):
        feats, logits = _set_activations(path, fn, batch_size)
        if feats is None:
            mu, sigma = fid_lib.load_statistics(path)
        else:
            mu, sigma = fid_lib.activation_statistics(feats)
            result[f"num_{name}"] = int(feats.shape[0])
        sets[name] = (feats, logits, mu, sigma)
    if save_real_stats:
        fid_lib.save_statistics(save_real_stats, sets["real"][2], sets["real"][3])
    (f_real, _, mu1, s1), (f_fake, logits_fake, mu2, s2) = sets["real"], sets["fake"]
    if f_real is not None and f_fake is not None:
        result["fid"] = fid_lib.frechet_distance_from_features(f_real, f_fake)
    else:
        result["fid"] = fid_lib.frechet_distance(mu1, s1, mu2, s2)
    if logits_fake is not None:
        splits = max(1, min(is_splits, logits_fake.shape[0] // 2))
        result["inception_score"], result["inception_score_std"] = fid_lib.inception_score(logits_fake, splits)
        result["inception_score_splits"] = splits
    return result


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def _write_json(path: str, result: dict[str, Any]) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def _run_recon(args: argparse.Namespace) -> None:
    result = evaluate_reconstruction(
        args.workdir, step=args.step, num_batches=args.num_batches, batch_size=args.batch_size, split=args.split,
        lpips_path=args.lpips, inception_path=args.inception,
    )
    out = args.out or os.path.join(args.workdir, f"recon_metrics_{result['step']}.json")
    _write_json(out, result)
    print(format_recon_table(result))
    print(f"wrote {out}")


def _run_reconstruct(args: argparse.Namespace) -> None:
    paths = write_reconstructions(args.workdir, args.out, num=args.num, step=args.step, split=args.split)
    print(f"wrote {len(paths) - 1} reconstructions and {paths[-1]}")


def _run_fid(args: argparse.Namespace) -> None:
    result = compute_fid(args.real, args.fake, args.inception, batch_size=args.batch_size, is_splits=args.is_splits,
                         save_real_stats=args.save_real_stats)
    print(f"FID {result['fid']:.4f}")
    if "inception_score" in result:
        print(f"IS  {result['inception_score']:.4f} +- {result['inception_score_std']:.4f} "
              f"({result['inception_score_splits']} splits)")
    if args.out:
        _write_json(args.out, result)
        print(f"wrote {args.out}")


def _run_judge(args: argparse.Namespace) -> None:
    from rq_jax import judge

    if not os.path.isfile(args.samples):  # before loading the config or any data
        raise FileNotFoundError(f"The samples file {args.samples!r} does not exist; write one with "
                                "`python -m rq_jax.sample --workdir STAGE2 --classes ... --out s.png`.")
    result = judge.judge_samples(args.samples, judge.data_config_from_file(args.data_config),
                                 judge_path=args.judge, train_steps=args.steps, seed=args.seed,
                                 requested_classes=[int(c) for c in args.classes.split(",")] if args.classes else None)
    print(judge.format_judge_report(result))
    out = args.out or os.path.splitext(args.samples)[0] + "_judge.json"
    _write_json(out, result)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m rq_jax.evaluate` argument parser (subcommands recon, reconstruct, fid, generate, judge)."""
    parser = argparse.ArgumentParser(
        prog="python -m rq_jax.evaluate", description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    recon = sub.add_parser("recon", help="reconstruction metrics of a stage-1 run on its held-out split")
    recon.add_argument("--workdir", required=True, help="stage-1 run directory (config.json + checkpoints)")
    recon.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    recon.add_argument("--num_batches", type=int, default=None, help="at most this many batches (default: all)")
    recon.add_argument("--batch_size", type=int, default=32)
    recon.add_argument("--split", default="validation")
    recon.add_argument("--lpips", default=None, help="LPIPS weights (.npz from python -m rq_jax.convert lpips)")
    recon.add_argument("--inception", default=None, help="Inception weights (.npz from python -m rq_jax.convert "
                       "inception): adds rFID")
    recon.add_argument("--out", default=None, help="JSON output (default: <workdir>/recon_metrics_<step>.json)")
    recon.set_defaults(run=_run_recon)

    rec = sub.add_parser("reconstruct", help="PNGs of inputs, reconstructions and coarse-to-fine partial decodes")
    rec.add_argument("--workdir", required=True)
    rec.add_argument("--step", type=int, default=None)
    rec.add_argument("--num", type=int, default=16, help="number of held-out images")
    rec.add_argument("--split", default="validation")
    rec.add_argument("--out", required=True, help="output folder")
    rec.set_defaults(run=_run_reconstruct)

    f = sub.add_parser("fid", help="FID between image folders / statistics files, IS of the fake set")
    f.add_argument("--real", required=True, help="image folder, image .npz (arr_0) or statistics .npz (mu, sigma)")
    f.add_argument("--fake", required=True, help="image folder, image .npz (arr_0) or statistics .npz (mu, sigma)")
    f.add_argument("--inception", required=True,
                   help="Inception weights (.npz from python -m rq_jax.convert inception)")
    f.add_argument("--batch_size", type=int, default=50)
    f.add_argument("--is_splits", type=int, default=10, help="Inception Score splits (the standard is 10)")
    f.add_argument("--save_real_stats", default=None, help="also write the real set's mu/sigma to this .npz")
    f.add_argument("--out", default=None, help="JSON output")
    f.set_defaults(run=_run_fid)

    from rq_jax import generate_eval

    generate_eval.add_parser(sub)

    j = sub.add_parser("judge", help="class accuracy and demo FID of conditional samples under a small trained CNN")
    j.add_argument("--samples", required=True, help=".npz from python -m rq_jax.sample (images uint8, cond)")
    j.add_argument("--data_config", required=True, help="config .py whose get_config().data is the real data "
                   "(e.g. configs/rqvae/demo.py)")
    j.add_argument("--judge", default=None, help="judge weights .npz, trained and cached there when missing "
                   "(default: judge_<dataset>_<size>....npz in the embedded-data cache folder)")
    j.add_argument("--steps", type=int, default=1200, help="training steps of a new judge")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--classes", default="", help="comma-separated class ids, one per grid row, instead of the "
                   "samples' own classes (e.g. the classes of text prompts' emoji)")
    j.add_argument("--out", default=None, help="JSON output (default: <samples>_judge.json)")
    j.set_defaults(run=_run_judge)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and runs the subcommand; expected failures exit with a one-line error."""
    from rq_jax.checkpoints import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        parser.exit(1, f"error: {e}\n")


if __name__ == "__main__":
    main()
