"""Inception activations and statistics of image sets, and `compute_fid` between two of them.

A set is an image folder, an `.npz` of uint8 images, or an `.npz` of statistics (`mu`, `sigma`:
pytorch-fid's and ADM's format; see `rq_jax.eval.io`). The network is the FID Inception-v3 of
`rq_jax.models.inception`; the metrics are those of `rq_jax.eval.fid`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rq_jax.eval import fid as fid_lib
from rq_jax.eval.io import image_files, jit_module_fn, npz_images, pad_batch, read_image
from rq_jax.metrics import Progress

# The smallest image set `compute_fid` accepts by default: below it FID is dominated by its bias and noise.
MIN_FID_IMAGES = 2048


def inception_activations(
    inception: nnx.Module, images: list[str] | np.ndarray, *, batch_size: int = 50, what: str = "images"
) -> tuple[np.ndarray, np.ndarray]:
    """(pool3 features [N, 2048], unbiased logits [N, 1008]) of image files or a uint8 array [N, H, W, 3].

    Images are read as RGB, mapped to [-1, 1] and resized to 299 by the network (bilinear, as
    pytorch-fid); batches of mixed sizes are resized to 299 one image at a time first.
    """
    return batch_activations(jit_module_fn(inception, lambda m, x: m(x)), images, batch_size=batch_size, what=what)


def _to_network_batch(arrays: list[np.ndarray]) -> np.ndarray:
    """uint8 images (of one size, or each resized to 299 first) -> float32 [B, H, W, 3] in [-1, 1]."""
    from rq_jax.models.inception import INCEPTION_SIZE, resize_bilinear

    if len({a.shape for a in arrays}) > 1:
        arrays = [np.asarray(resize_bilinear(jnp.asarray(a[None], jnp.float32) / 127.5 - 1.0, INCEPTION_SIZE))[0]
                  for a in arrays]
        x = np.stack(arrays)
    else:
        x = np.stack(arrays).astype(np.float32) / 127.5 - 1.0
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"Images must be [N, H, W, 3], got a batch of shape {x.shape}.")
    return x


def _read_readable(paths: list[str], skipped: dict[str, str] | None) -> list[np.ndarray]:
    """The images of `paths` that decode; the others are recorded in `skipped` (or raise when it is None)."""
    arrays = []
    for p in paths:
        try:
            arrays.append(read_image(p))
        except Exception as e:  # noqa: BLE001 - any decoder failure means an unreadable image
            if skipped is None:
                raise ValueError(f"The image {p!r} could not be read ({type(e).__name__}: {e}).") from e
            skipped[p] = f"{type(e).__name__}: {e}"
    return arrays


def batch_activations(fn: Callable, images: list[str] | np.ndarray, *, batch_size: int, what: str,
                      skipped: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`inception_activations` with an already jitted network `fn` (compiled once per batch shape).

    With a `skipped` dict, image files that do not decode are left out and recorded there."""
    n = len(images)
    batch_size = min(batch_size, n)
    pools, logits = [], []
    progress = Progress(n, what=what)
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        arrays = _read_readable(chunk, skipped) if isinstance(images, list) else list(chunk)
        if not arrays:
            continue
        out = fn(jnp.asarray(pad_batch(_to_network_batch(arrays), batch_size)))
        pools.append(np.asarray(out.pool, np.float64)[: len(arrays)])
        logits.append(np.asarray(out.logits_unbiased, np.float64)[: len(arrays)])
        progress.update(min(start + batch_size, n))
    return np.concatenate(pools), np.concatenate(logits)


class ImageSet(NamedTuple):
    """What an FID input holds: image files or a uint8 array, or None for a statistics `.npz`."""

    images: list[str] | np.ndarray | None
    sizes: dict[tuple[int, int], int]  # (height, width) -> count
    skipped: dict[str, str]           # unreadable files -> why


def open_image_set(path: str) -> ImageSet:
    """The images of a folder (their sizes from the file headers; unreadable files skipped) or an `.npz`."""
    from PIL import Image

    if os.path.isdir(path):
        files, sizes, skipped = [], Counter(), {}
        for f in image_files(path):
            try:
                with Image.open(f) as img:
                    sizes[(img.height, img.width)] += 1
                files.append(f)
            except Exception as e:  # noqa: BLE001 - any decoder failure means an unreadable image
                skipped[f] = f"{type(e).__name__}: {e}"
        return ImageSet(files, dict(sizes), skipped)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} is neither an image folder nor an .npz file.")
    if not path.endswith(".npz"):
        raise ValueError(f"{path!r} is not a folder of images or an .npz statistics file.")
    images = npz_images(path)
    if images is None:
        return ImageSet(None, {}, {})
    return ImageSet(images, {tuple(images.shape[1:3]): len(images)}, {})


def check_image_set(path: str, image_set: ImageSet, *, min_images: int, resize: bool) -> None:
    """Raises one sentence for a set too small for a meaningful FID, or of mixed sizes without `resize`."""
    if image_set.images is None:
        return
    n = len(image_set.images)
    unreadable = f" ({len(image_set.skipped)} unreadable files skipped)" if image_set.skipped else ""
    if n < min_images:
        raise ValueError(
            f"{path!r} holds {n} readable images{unreadable}: FID from fewer than {min_images} is biased and noisy "
            "(the paper's protocol uses 50,000); add images, or pass --allow_small to compute it anyway."
        )
    if len(image_set.sizes) > 1 and not resize:
        sizes = ", ".join(f"{w}x{h}: {c}" for (h, w), c in sorted(image_set.sizes.items(), key=lambda kv: -kv[1])[:3])
        raise ValueError(
            f"{path!r} mixes image sizes ({sizes}); FID compares images of one size: pass --resize to resize each "
            "image to the Inception input (299x299) instead."
        )


def set_activations(path: str, fn: Callable, batch_size: int, image_set: ImageSet | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(features, logits) of a folder or an image `.npz`; (None, None) when `path` holds statistics.

    Files of a folder that fail to decode are skipped and added to `image_set.skipped`."""
    image_set = open_image_set(path) if image_set is None else image_set
    if image_set.images is None:
        return None, None
    return batch_activations(fn, image_set.images, batch_size=batch_size, what=path, skipped=image_set.skipped)


def set_statistics(path: str, feats: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a set: of its features, or read from `path` when it holds statistics (feats None)."""
    return fid_lib.load_statistics(path) if feats is None else fid_lib.activation_statistics(feats)


def compute_fid(real: str, fake: str, inception_path: str, *, batch_size: int = 50, is_splits: int = 10,
                save_real_stats: str | None = None, min_images: int = MIN_FID_IMAGES, resize: bool = False
                ) -> dict[str, Any]:
    """FID between two image sets (folders, image `.npz`, or statistics `.npz`), IS of the fake set.

    Each image set needs `min_images` readable images of one size (`resize`: any sizes, each resized to
    299); unreadable files are skipped and counted (`num_<set>_unreadable`). The IS uses `is_splits`
    chunks, fewer when the fake set has under two images per chunk.
    """
    from rq_jax.models.inception import load_inception

    for p in (real, fake):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p!r} does not exist: give an image folder or an .npz statistics file.")
    fn = jit_module_fn(load_inception(inception_path), lambda m, x: m(x))
    image_sets = {name: open_image_set(path) for name, path in (("real", real), ("fake", fake))}
    for name, path in (("real", real), ("fake", fake)):
        check_image_set(path, image_sets[name], min_images=min_images, resize=resize)
    result: dict[str, Any] = {"real": real, "fake": fake}
    sets = {}
    for name, path in (("real", real), ("fake", fake)):
        feats, logits = set_activations(path, fn, batch_size, image_sets[name])
        if feats is not None:
            result[f"num_{name}"] = int(feats.shape[0])
            result[f"num_{name}_unreadable"] = len(image_sets[name].skipped)
        sets[name] = (feats, logits, *set_statistics(path, feats))
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
