"""Reconstruction quality of a stage-1 run on its held-out split, and reconstructions as PNGs.

`evaluate_reconstruction`: PSNR, SSIM, LPIPS (given its weights), PSNR per decoding depth
(coarse-to-fine), codebook perplexity / usage / dead codes per depth, and rFID (given Inception
weights: features of the inputs vs the reconstructions). `write_reconstructions`: per image, input |
reconstruction | depth 1..D, and one grid. The split is streamed in one process (no multi-host sharding).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax import metrics
from rq_jax.eval import fid as fid_lib
from rq_jax.eval.io import jit_module_fn, pad_batch

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
# The run and its held-out split
# ---------------------------------------------------------------------------------------------------
def held_out_batches(data_config: Any, *, split: str, batch_size: int, num_batches: int | None
                     ) -> tuple[Iterator[tuple[np.ndarray, int]], int, str]:
    """Streams (padded images [B, S, S, 3], number of real images) over a split; also the batch count and
    a description. Unlike `eval_batches` it neither holds the split in memory nor drops the last partial batch.
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
            yield pad_batch(images, batch_size), images.shape[0]

    return gen(), total, f"{info.description}, {info.split} split"


def _load_run(workdir: str, step: int | None):
    from rq_jax.runs import load_rqvae

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"The workdir {workdir!r} does not exist; give the --workdir of a stage-1 run.")
    return load_rqvae(workdir, step)


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------
def _recon_fn(model: Any) -> Callable:
    """fn(x) -> codes, per-depth MSE [D, B], SSIM [B] and the full reconstruction, jitted."""
    depth = model.depth

    def compute(model, x):
        codes = model.encode(x)
        recons = [model.decode_partial(codes, d) for d in range(1, depth + 1)]
        mse_DxB = jnp.stack([jnp.mean(jnp.square(r - x), axis=(1, 2, 3)) for r in recons])
        return dict(codes=codes, mse=mse_DxB, ssim=ssim(x, recons[-1]), recon=recons[-1])

    return jit_module_fn(model, compute)


def _collect(batches: Iterator[tuple[np.ndarray, int]], total: int, rq_fn: Callable, lp_fn: Callable | None,
             inc_fn: Callable | None) -> dict[str, np.ndarray]:
    """Runs the networks over the batches; per image: mse [D, N], ssim, codes, lpips and Inception features."""
    acc: dict[str, list] = {k: [] for k in ("mse", "ssim", "codes", "lpips", "feats_real", "feats_fake")}
    progress = metrics.Progress(total, what="batch")
    psnr_sum = 0.0
    for i, (x_np, n) in enumerate(batches):
        x = jnp.asarray(x_np)
        out = rq_fn(x)
        if lp_fn is not None:
            acc["lpips"].append(np.asarray(lp_fn(x, out["recon"]))[:n])
        if inc_fn is not None:
            acc["feats_real"].append(np.asarray(inc_fn(x))[:n])
            acc["feats_fake"].append(np.asarray(inc_fn(jnp.clip(out["recon"], -1.0, 1.0)))[:n])  # as saved images
        acc["mse"].append(np.asarray(out["mse"], np.float64)[:, :n])
        acc["ssim"].append(np.asarray(out["ssim"])[:n])
        acc["codes"].append(np.asarray(out["codes"])[:n])
        psnr_sum += float(np.sum(10.0 * np.log10(4.0 / np.maximum(acc["mse"][-1][-1], 1e-12))))
        progress.update(i + 1, f"PSNR {psnr_sum / sum(m.shape[1] for m in acc['mse']):.2f} dB")
    return {k: np.concatenate(v, axis=1 if k == "mse" else 0) for k, v in acc.items() if v}


def _summarise(c: dict[str, np.ndarray], codebook_size: int) -> dict[str, Any]:
    """The JSON metrics of the collected per-image values."""
    from rq_jax.quantizer import codebook_usage

    psnr_DxN = 10.0 * np.log10(4.0 / np.maximum(c["mse"], 1e-12))  # images in [-1, 1]: peak-to-peak 2
    usage = jax.device_get(codebook_usage(jnp.asarray(c["codes"]), codebook_size))
    result: dict[str, Any] = {
        "num_images": int(c["mse"].shape[1]),
        "psnr": float(psnr_DxN[-1].mean()),
        "ssim": float(c["ssim"].mean()),
        "psnr_per_depth": [float(v) for v in psnr_DxN.mean(axis=1)],
        "codebook_perplexity": [float(v) for v in usage["perplexity"]],
        "codebook_usage": [float(v) for v in usage["usage"]],
        "codebook_dead": [int(v) for v in usage["dead"]],
        "codebook_size": codebook_size,
    }
    if "lpips" in c:
        result["lpips"] = float(c["lpips"].mean())
    if "feats_real" in c:
        real, fake = c["feats_real"], c["feats_fake"]
        result["rfid"] = fid_lib.frechet_distance_from_features(real, fake)
        if real.shape[0] < 2 * real.shape[1]:
            result["rfid_note"] = (f"only {real.shape[0]} images for {real.shape[1]}-d features: rFID is biased "
                                   "upwards and only comparable at the same number of images (papers use 50k)")
    return result


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

    lp = load_lpips(lpips_path) if lpips_path else None  # weights first: a missing file fails before any work
    inc = load_inception(inception_path) if inception_path else None
    model, config, step = _load_run(workdir, step)
    lp_fn = jit_module_fn(lp, lambda m, x, y: m(x, y)) if lp is not None else None
    inc_fn = jit_module_fn(inc, lambda m, x: m.features(x)) if inc is not None else None

    batches, total, description = held_out_batches(config.data, split=split, batch_size=batch_size,
                                                    num_batches=num_batches)
    print(f"evaluating step {step} of {workdir} on {description}: {total} batches of {batch_size}",
          file=sys.stderr, flush=True)
    collected = _collect(batches, total, _recon_fn(model), lp_fn, inc_fn)
    summary = _summarise(collected, int(config.model.codebook_size))
    return {"workdir": workdir, "step": int(step), "split": split, **summary}


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
# Reconstructions as PNGs
# ---------------------------------------------------------------------------------------------------
def write_reconstructions(workdir: str, out_dir: str, *, num: int = 16, step: int | None = None,
                          split: str = "validation", batch_size: int = 16) -> list[str]:
    """Writes `<out>/recon_{i}.png` (input | reconstruction | depth 1..D) per image and `<out>/grid.png`."""
    model, config, step = _load_run(workdir, step)
    depth = model.depth

    def compute(model, x):
        codes = model.encode(x)
        return jnp.stack([model.decode_partial(codes, d) for d in range(1, depth + 1)])

    fn = jit_module_fn(model, compute)
    bs = max(1, min(batch_size, num))
    batches, _, _ = held_out_batches(config.data, split=split, batch_size=bs, num_batches=math.ceil(num / bs))
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
