"""Per-example image operations of the pipelines: decode, square crop + resize, flip, scale to [-1, 1].

Plain numpy/PIL so they run inside grain's map on any host; the random ones take the
``np.random.Generator`` that grain's ``random_map`` seeds per record, which makes them reproducible.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
}


def decode_image(data: bytes | str | np.ndarray | Image.Image, *, draft_size: int | None = None) -> Image.Image:
    """An RGB PIL image from encoded bytes, a file path, an array or a PIL image.

    Transparent images are composited on white. ``draft_size`` lets the JPEG decoder downscale by a
    power of two while keeping both sides at least that large (much faster for big photos).
    Raises (OSError, ValueError, SyntaxError, ...) when the data is not a readable image.
    """
    if isinstance(data, np.ndarray):
        arr = data
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected an image array [H, W, 1|3|4], got shape {data.shape}")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return _to_rgb(Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8, copy=False))))
    if isinstance(data, Image.Image):
        return _to_rgb(data)
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with Image.open(source) as img:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        out = _to_rgb(img)
        return out if out is not img else img.copy()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        background.alpha_composite(img.convert("RGBA"))
        img = background
    return img if img.mode == "RGB" else img.convert("RGB")


def crop_box(
    width: int, height: int, rng: np.random.Generator | None, min_scale: float = 1.0
) -> tuple[int, int, int, int]:
    """A square crop (left, top, right, bottom): centred when ``rng`` is None, else random.

    The random square covers a uniform fraction in [min_scale, 1] of the largest square's area, at a
    uniform position; with ``min_scale=1`` this is resize-shorter-side + random crop (ImageNet recipe),
    with ``min_scale<1`` it is a square RandomResizedCrop (the official FFHQ recipe uses 0.75).
    """
    short = min(width, height)
    if rng is None:
        side = short
        left, top = (width - side) // 2, (height - side) // 2
    else:
        scale = rng.uniform(min_scale, 1.0) if min_scale < 1.0 else 1.0
        side = max(1, min(short, round(short * math.sqrt(scale))))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
    return left, top, left + side, top + side


def crop_resize(
    img: Image.Image,
    size: int,
    rng: np.random.Generator | None = None,
    *,
    min_scale: float = 1.0,
    resample: str = "bilinear",
) -> np.ndarray:
    """Square crop (see :func:`crop_box`) resized to ``size`` x ``size``, as uint8 [size, size, 3]."""
    box = crop_box(img.width, img.height, rng, min_scale)
    if box == (0, 0, size, size) and img.size == (size, size):
        return np.asarray(img)
    side = box[2] - box[0]
    if side == size:
        return np.asarray(img.crop(box))
    return np.asarray(img.resize((size, size), RESAMPLE[resample], box=box, reducing_gap=3.0))


def crop_resize_array(
    arr: np.ndarray,
    size: int,
    rng: np.random.Generator | None = None,
    *,
    min_scale: float = 1.0,
    resample: str = "bilinear",
) -> np.ndarray:
    """:func:`crop_resize` for a uint8 [H, W, 3] array; no PIL round trip when nothing changes."""
    h, w = arr.shape[:2]
    if h == w == size and (rng is None or min_scale >= 1.0):
        return arr
    return crop_resize(decode_image(arr), size, rng, min_scale=min_scale, resample=resample)


def random_flip(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors left-right with probability 1/2."""
    return np.ascontiguousarray(arr[:, ::-1]) if rng.random() < 0.5 else arr


def to_float(arr: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (the RQ-VAE's input range)."""
    return arr.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255], the inverse of :func:`to_float` (for saving samples)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
