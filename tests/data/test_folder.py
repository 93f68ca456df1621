"""Image folders: recursive, any Pillow format, labels from sub-folders, corrupt files skipped and counted."""

import logging
import os

import numpy as np
import pytest
from data_helpers import make_image_folder

from rq_jax.data import build_image_pipeline, eval_batches
from rq_jax.data.sources import index_folder

HOST = {"process_index": 0, "process_count": 1}


def folder_config(root, **kw):
    return {"name": "folder", "folder": root, "image_size": 16, "val_every": 0, **kw}


def test_index_folder_labels_and_formats(image_folder):
    root, good, bad = image_folder
    index = index_folder(root, "train", val_every=0)
    assert index.class_names == ("cats", "dogs")
    assert sorted(index.files) == sorted(good + bad)  # notes.txt is not an image file
    labels = dict(zip(index.files, index.labels.tolist(), strict=True))
    assert all(labels[f] == (0 if f"{os.sep}cats{os.sep}" in f else 1) for f in good)
    assert any(f.endswith(".webp") for f in index.files) and any("nested" in f for f in index.files)


def test_corrupt_images_are_skipped_and_counted(image_folder, caplog):
    root, good, bad = image_folder
    config = folder_config(root)
    with caplog.at_level(logging.WARNING, logger="rq_jax.data"):
        it, info = build_image_pipeline(
            config, split="train", batch_size=3, seed=0, repeat=False, drop_remainder=False, **HOST
        )
        batches = list(it)
    assert sum(len(b["index"]) for b in batches) == len(good) == info.num_examples - len(bad)
    assert info.skipped.count == 2 and sorted(info.skipped.skipped) == bad
    assert sum("Skipping unreadable image" in r.getMessage() for r in caplog.records) == 2
    for batch in batches:
        assert batch["image"].shape[1:] == (16, 16, 3) and batch["image"].dtype == np.float32
        assert np.all(np.abs(batch["image"]) <= 1.0)


def test_corrupt_files_counted_once_over_epochs(image_folder):
    root, good, bad = image_folder
    it, info = build_image_pipeline(folder_config(root), split="train", batch_size=4, seed=1, **HOST)
    for _ in range(3 * len(good) // 4):  # about three epochs
        assert next(it)["image"].shape == (4, 16, 16, 3)
    assert info.skipped.count == 2 and info.skipped.events >= 4


def test_centre_crop_of_solid_images_keeps_colour(tmp_path):
    root, good, _ = make_image_folder(tmp_path / "solid", corrupt=False)
    batches, info = eval_batches(
        folder_config(root, folder_labels=False), batch_size=len(good), split="train", **HOST
    )
    assert info.num_classes == 0 and np.all(batches[0]["label"] == -1)
    images = batches[0]["image"]
    # Each solid-colour image stays (nearly, JPEG/WebP are lossy) solid after crop + resize.
    assert images.std(axis=(1, 2)).max() < 0.05


def test_train_and_val_subfolders(tmp_path):
    make_image_folder(tmp_path / "ds" / "train", corrupt=False)
    make_image_folder(tmp_path / "ds" / "val", corrupt=False)
    root = str(tmp_path / "ds")
    train = index_folder(root, "train")
    val = index_folder(root, "validation")
    assert train.root.endswith("train") and val.root.endswith("val")
    assert train.class_names == val.class_names == ("cats", "dogs")
    assert len(train.files) == len(val.files) == 9


def test_holdout_without_split_folders(image_folder):
    root, good, bad = image_folder
    train = index_folder(root, "train", val_every=4)
    val = index_folder(root, "validation", val_every=4)
    assert set(train.files).isdisjoint(val.files)
    assert sorted(train.files + val.files) == sorted(good + bad) and len(val.files) == 3


def test_missing_folder_is_one_clear_error(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.data.folder") as e:
        build_image_pipeline(folder_config(missing), split="train", batch_size=2, **HOST)
    assert missing in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No images found"):
        build_image_pipeline(folder_config(str(empty)), split="train", batch_size=2, **HOST)


def test_folder_where_nothing_decodes_fails_at_once(tmp_path):
    """30 text files named .png: the repeated, filtered training split would skip forever; it stops with a sentence."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(30):
        (bad / f"b{i:02d}.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"None of any of the 30 images of the train split .* could be read "
                                         r"\(30 unreadable, e\.g\. .*b00\.png"):
        build_image_pipeline(folder_config(str(bad)), split="train", batch_size=4, seed=0, **HOST)


def test_split_with_fewer_readable_images_than_a_batch(tmp_path):
    root, good, bad = make_image_folder(tmp_path / "few")  # 9 good + 2 unreadable
    with pytest.raises(ValueError, match=r"has 11 examples but only 9 readable \(2 unreadable\): too few for one "
                                         r"batch of 10"):
        eval_batches(folder_config(root), batch_size=10, split="train", **HOST)
