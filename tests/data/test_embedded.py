"""The embedded datasets: digits always, emoji when the font is installed; caching; the class table."""

import logging
import os

import numpy as np
import pytest
from data_helpers import DIGITS_LIMIT, needs_emoji_font

from rq_jax.data import build_image_pipeline, embedded


def test_digits_render_and_split(cache_dir):
    data = embedded.load_embedded("digits", cache_dir=cache_dir, image_size=16, limit=DIGITS_LIMIT)
    assert data.images.shape == (DIGITS_LIMIT, 16, 16, 3) and data.images.dtype == np.uint8
    assert set(data.labels.tolist()) == set(range(10))
    assert data.captions[3] == "digit three" and data.class_names[3] == "three"
    np.testing.assert_array_equal(data.caption_ids, data.labels)
    # Dark ink on a white background, grey in all three channels.
    assert data.images.max() == 255 and data.images.min() < 64
    np.testing.assert_array_equal(data.images[..., 0], data.images[..., 2])
    train, val = data.split_indices("train", 10), data.split_indices("validation", 10)
    assert len(val) == DIGITS_LIMIT // 10 and set(train).isdisjoint(val)
    assert sorted([*train, *val]) == list(range(DIGITS_LIMIT))
    assert os.path.isfile(os.path.join(cache_dir, f"digits_16_n{DIGITS_LIMIT}.npz"))


def test_second_load_reads_the_cache(cache_dir, monkeypatch):
    first = embedded.load_embedded("digits", cache_dir=cache_dir, image_size=16, limit=DIGITS_LIMIT)

    def fail(*args, **kwargs):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(embedded, "render_digits", fail)
    monkeypatch.setattr(embedded, "render_emoji", fail)
    second = embedded.load_embedded("digits", cache_dir=cache_dir, image_size=16, limit=DIGITS_LIMIT)
    np.testing.assert_array_equal(first.images, second.images)
    assert first.captions == second.captions


def test_stale_cache_version_is_rerendered(tmp_path):
    data = embedded.load_embedded("digits", cache_dir=str(tmp_path), image_size=8, limit=20)
    with np.load(data.path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["version"] = np.asarray(-1)
    arrays["images"] = np.zeros_like(arrays["images"])
    np.savez(data.path, **arrays)
    again = embedded.load_embedded("digits", cache_dir=str(tmp_path), image_size=8, limit=20)
    np.testing.assert_array_equal(again.images, data.images)


@needs_emoji_font
def test_emoji_render(emoji_subset):
    data = emoji_subset
    assert len(data) == 60 and data.images.shape == (60, 32, 32, 3)
    assert data.class_names == embedded.EMOJI_CLASSES
    assert len(set(data.labels.tolist())) >= 6  # an evenly spaced subset spans most groups
    assert len(set(data.captions)) == 60 and all(c and c == c.lower() for c in data.captions)
    # White background in the corners, colour in the middle.
    corners = data.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 240).mean() > 0.9
    assert data.images[:, 8:24, 8:24].std(axis=(1, 2, 3)).min() > 1.0
    # Captions index the caption list one to one.
    np.testing.assert_array_equal(data.caption_ids, np.arange(60))


@needs_emoji_font
def test_emoji_cache_is_used(emoji_subset, cache_dir, monkeypatch):
    monkeypatch.setattr(embedded, "render_emoji", lambda *a, **k: pytest.fail("re-rendered"))
    again = embedded.load_embedded("emoji", cache_dir=cache_dir, image_size=32, limit=60)
    np.testing.assert_array_equal(again.images, emoji_subset.images)


@needs_emoji_font
def test_emoji_enumeration_covers_the_font():
    seqs = embedded.enumerate_emoji(embedded.find_emoji_font())
    assert len(seqs) > 1300  # about 1,400 single code points, plus ~2,500 sequences with libraqm
    keys = {tuple(s) for s in seqs}
    assert (0x1F600,) in keys and (0x1F34E,) in keys and (0x1F693,) in keys
    assert (0x200D,) not in keys and (0x1F3FB,) not in keys  # components are not emoji of their own
    if embedded._can_shape_sequences():
        assert (0x1F1FA, 0x1F1F8) in keys  # a flag
        assert (0x1F468, 0x200D, 0x1F4BB) in keys  # a ZWJ sequence, in logical (not reversed) order
        assert (0x1F3C3, 0x1F3FB, 0x200D, 0x2640) in keys


def test_emoji_names_and_groups():
    assert embedded.emoji_name([0x1F600]) == "grinning face"
    assert embedded.emoji_name([0x1F34E]) == "red apple"
    assert embedded.emoji_name([0x1F693]) == "police car"
    assert embedded.emoji_name([0x1F1FA, 0x1F1F8]) == "flag: us"
    assert embedded.emoji_name([0x1F3F4, 0xE0067, 0xE0062, 0xE0073, 0xE0063, 0xE0074, 0xE007F]) == "flag: gb-sct"
    assert embedded.emoji_name([0x37, 0xFE0F, 0x20E3]) == "keycap: 7"
    assert embedded.emoji_name([0x1F44D, 0x1F3FD]) == "thumbs up sign: medium skin tone"
    assert embedded.emoji_name([0x1F468, 0x1F3FB, 0x200D, 0x1F4BB]) == "man + personal computer: light skin tone"
    groups = {
        0x1F600: "smileys & emotion",
        0x1F468: "people & body",
        0x1F436: "animals & nature",
        0x1F34E: "food & drink",
        0x1F693: "travel & places",
        0x26BD: "activities",
        0x1F4BB: "objects",
        0x267B: "symbols",
        0x1F1FA: "flags",
    }
    for cp, group in groups.items():
        assert embedded.emoji_group(cp) == group, hex(cp)


def test_group_ranges_do_not_overlap():
    ranges = embedded.group_ranges()
    for (lo, hi, g), (lo2, _, g2) in zip(ranges, ranges[1:], strict=False):
        assert lo <= hi and hi < lo2, f"{lo:X}-{hi:X} ({g}) overlaps {lo2:X} ({g2})"
    assert {g for _, _, g in ranges} == set(embedded.EMOJI_CLASSES)


def test_embedded_falls_back_to_digits(tmp_path, caplog):
    config = {
        "name": "embedded",
        "data_dir": str(tmp_path),
        "image_size": 8,
        "limit": 40,
        "font_path": str(tmp_path / "missing.ttf"),
    }
    with caplog.at_level(logging.WARNING, logger="rq_jax.data"):
        it, info = build_image_pipeline(config, split="train", batch_size=4, process_index=0, process_count=1)
    assert info.embedded == "digits" and info.num_classes == 10
    messages = [r.getMessage() for r in caplog.records if "digits" in r.getMessage()]
    assert len(messages) == 1 and embedded.FONT_APT_COMMAND in messages[0]
    assert next(it)["image"].shape == (4, 8, 8, 3)


def test_emoji_without_font_is_one_clear_error(tmp_path):
    missing = str(tmp_path / "missing.ttf")
    with pytest.raises(FileNotFoundError) as e:
        embedded.load_embedded("emoji", cache_dir=str(tmp_path), image_size=8, font_path=missing)
    message = str(e.value)
    assert missing in message and embedded.FONT_APT_COMMAND in message
    assert "\n" not in message and message.endswith(".")


@needs_emoji_font
def test_emoji_without_libraqm_renders_single_code_points(monkeypatch):
    monkeypatch.setattr(embedded, "_can_shape_sequences", lambda: False)
    arrays = embedded.render_emoji(16, font_path=embedded.find_emoji_font(), limit=30)
    assert len(arrays["images"]) == 30 and all(" " not in k for k in arrays["keys"])
