"""Helpers shared by the data-pipeline tests (imported by conftest.py and the test modules)."""

import os

import numpy as np
import pytest
from PIL import Image

from rq_jax.data import embedded

HAS_EMOJI_FONT = embedded.emoji_available()[0]
needs_emoji_font = pytest.mark.skipif(
    not HAS_EMOJI_FONT, reason=f"no emoji font: {embedded.FONT_APT_COMMAND} (and pip install fonttools)"
)

DIGITS_LIMIT = 300


def _write(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def make_image_folder(root, *, corrupt: bool = True):
    """cats/ and dogs/ with 4 good images each in various formats and sizes, plus 2 unreadable files.

    Returns (root, good_files, bad_files); each good image is a distinct solid colour.
    """
    rng = np.random.default_rng(0)
    formats = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("bmp", "BMP")]
    good = []
    for c, cls in enumerate(["cats", "dogs"]):
        for i, (ext, fmt) in enumerate(formats):
            h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            colour = np.array([40 + 50 * i, 60 + 120 * c, 200 - 40 * i], np.uint8)
            sub = "nested" if i == 3 else ""  # recursion below the class folder
            path = os.path.join(root, cls, sub, f"img{i}.{ext}")
            _write(path, np.broadcast_to(colour, (h, w, 3)).copy(), fmt)
            good.append(path)
    grey = os.path.join(root, "dogs", "grey.png")  # a greyscale image is converted to RGB
    _write(grey, np.full((24, 24), 128, np.uint8))
    good.append(grey)
    with open(os.path.join(root, "notes.txt"), "w") as f:  # not an image extension: ignored
        f.write("hello")
    bad = []
    if corrupt:
        garbage = os.path.join(root, "cats", "garbage.jpg")
        with open(garbage, "wb") as f:
            f.write(b"this is not a jpeg" * 10)
        truncated = os.path.join(root, "dogs", "truncated.png")
        _write(truncated, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        with open(truncated, "rb") as f:
            head = f.read()[:200]
        with open(truncated, "wb") as f:
            f.write(head)
        bad = [garbage, truncated]
    return str(root), sorted(good), sorted(bad)
