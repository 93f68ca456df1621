"""Inputs and outputs of the evaluation: image folders, `.npz` image sets, JSON results, fixed-size batches.

Image sets are given as a folder of image files (the extensions pytorch-fid reads) or an `.npz` of uint8
images [N, H, W, 3] under `arr_0` (ADM's reference batches) or `images` (`python -m rq_jax.sample`).
Batches are padded to one size so each jitted network compiles once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")  # pytorch-fid's


def image_files(folder: str) -> list[str]:
    """The sorted paths of the image files in `folder`; ValueError when there are none."""
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"The folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return [os.path.join(folder, f) for f in files]


def read_image(path: str) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), np.uint8)


def npz_images(path: str) -> np.ndarray | None:
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


def write_json(path: str, result: dict[str, Any]) -> None:
    """Writes `result` as indented JSON, creating the folder."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def write_pngs(folder: str, images_u8: np.ndarray, start: int) -> None:
    """Writes uint8 images [N, H, W, 3] as `<folder>/<start + i:06d>.png`."""
    from PIL import Image

    for j, image in enumerate(images_u8):
        Image.fromarray(image).save(os.path.join(folder, f"{start + j:06d}.png"))


def pad_batch(images_BHWC: np.ndarray, batch_size: int) -> np.ndarray:
    """Pads a short last batch with zeros to `batch_size`, so the jitted functions compile once."""
    n = images_BHWC.shape[0]
    if n == batch_size:
        return images_BHWC
    pad = np.zeros((batch_size - n, *images_BHWC.shape[1:]), images_BHWC.dtype)
    return np.concatenate([images_BHWC, pad])


def jit_module_fn(module: nnx.Module, fn: Callable) -> Callable:
    """jax.jit of `fn(module, *args)` with the module's state as a traced argument (graph static)."""
    graph, state = nnx.split(module)
    jitted = jax.jit(lambda s, *args: fn(nnx.merge(graph, s), *args))
    return lambda *args: jitted(state, *args)

