"""Random-access sources of raw image records for grain ``MapDataset.source``.

Every source returns records ``{"image": ..., "label": int, "caption": int, "index": int}`` where the
image is still undecoded (a file path, encoded bytes or a uint8 array): decoding happens in the
pipeline's map, where a failure is counted and the record dropped instead of stopping the epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any

import numpy as np

from rq_jax.data.embedded import EmbeddedDataset

log = logging.getLogger(__name__)

# How many unreadable images are logged one by one before the rest are only counted.
_MAX_LOGGED_SKIPS = 10


class SkipCounter:
    """Thread-safe record of the examples the pipeline skipped because their image was unreadable.

    ``count`` is the number of distinct examples (a corrupt file met again in a later epoch, or again
    after a restore, counts once); ``events`` counts every skip. With grain worker processes the
    decoding happens in the workers and this object (in the main process) stays at zero.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}
        self.events = 0

    def add(self, key: str, error: BaseException) -> None:
        with self._lock:
            self.events += 1
            if key in self._keys:
                return
            self._keys[key] = f"{type(error).__name__}: {error}"
            n = len(self._keys)
        if n <= _MAX_LOGGED_SKIPS:
            log.warning("Skipping unreadable image %s (%s: %s).", key, type(error).__name__, error)
        if n == _MAX_LOGGED_SKIPS:
            log.warning("Further unreadable images are skipped without a message each (see info.skipped).")

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._keys)

    @property
    def skipped(self) -> dict[str, str]:
        """Skipped example -> the error that made it unreadable."""
        with self._lock:
            return dict(self._keys)

    def __repr__(self) -> str:
        return f"SkipCounter(count={self.count}, events={self.events})"

    def __getstate__(self) -> dict[str, Any]:  # picklable for grain worker processes
        return {"keys": self.skipped, "events": self.events}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._keys = dict(state["keys"])
        self.events = state["events"]


@dataclasses.dataclass(frozen=True)
class SourceMeta:
    """What the pipeline reports about a source besides its records."""

    dataset: str  # "emoji" | "digits" | "folder" | "tfds"
    description: str
    class_names: tuple[str, ...]
    captions: tuple[str, ...] | None


class ArraySource:
    """Records of an embedded dataset (uint8 images in memory), restricted to some indices."""

    def __init__(self, data: EmbeddedDataset, indices: np.ndarray):
        self._data = data
        self._indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self._indices[i])
        return {
            "image": self._data.images[j],
            "label": int(self._data.labels[j]),
            "caption": int(self._data.caption_ids[j]),
            "index": i,
        }


# ------------------------------------------------------------------------------------------- folders


def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) of every format this Pillow can open."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _walk_images(root: str, extensions: frozenset[str]) -> list[str]:
    """Image files under ``root``, recursively, sorted; hidden files and folders are ignored."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.join(dirpath, name))
    return sorted(found)


_SPLIT_DIRS = {"train": ("train", "training"), "validation": ("validation", "val", "valid", "eval")}


def _split_dir(folder: str, split: str) -> str | None:
    for name in _SPLIT_DIRS.get(split, (split,)):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            return path
    return None


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """The files of one split of an image folder and their labels."""

    files: tuple[str, ...]
    labels: np.ndarray  # int32, -1 where the folder has no class sub-folders
    class_names: tuple[str, ...]
    root: str


def index_folder(folder: str, split: str, *, labels_from_subdirs: bool = True, val_every: int = 10) -> FolderIndex:
    """Lists the images of a split of ``folder``.

    If ``folder`` has a sub-folder named after the split (``train``; ``validation``/``val``/``valid``/
    ``eval``), the split is that sub-folder. Otherwise (or when only ``train`` exists and the
    validation split is asked for) the images are sorted by path and every ``val_every``-th one is the
    validation split (``val_every=0``: both splits are the whole folder). With ``labels_from_subdirs``
    the class of an image is its first-level sub-folder under the split root (classes listed in
    sorted order); images lying directly in the root get label -1.
    """
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Image folder {folder!r} does not exist: set config.data.folder to a directory of images."
        )
    split = "validation" if split in ("val", "valid", "eval") else split
    train_dir = _split_dir(folder, "train")
    root = _split_dir(folder, split)
    hold_out = root is None
    if hold_out:
        root = train_dir or folder
    extensions = image_extensions()
    files = _walk_images(root, extensions)
    if not files:
        raise FileNotFoundError(
            f"No images found in {root!r} (looked recursively for {', '.join(sorted(extensions)[:8])}, ...)."
        )
    if hold_out and val_every > 0:
        if split == "train":
            files = [f for i, f in enumerate(files) if i % val_every != 0]
        elif split == "validation":
            files = [f for i, f in enumerate(files) if i % val_every == 0]
        else:
            raise ValueError(f"Unknown split {split!r} for an image folder: use 'train' or 'validation'.")
    class_root = train_dir or root
    class_names: tuple[str, ...] = ()
    if labels_from_subdirs:
        class_names = tuple(
            sorted(
                d
                for d in os.listdir(class_root)
                if not d.startswith(".") and os.path.isdir(os.path.join(class_root, d))
            )
        )
    lookup = {name: i for i, name in enumerate(class_names)}
    labels = np.full(len(files), -1, np.int32)
    if class_names:
        for i, f in enumerate(files):
            parts = os.path.relpath(f, root).split(os.sep)
            if len(parts) > 1:
                labels[i] = lookup.get(parts[0], -1)
    return FolderIndex(files=tuple(files), labels=labels, class_names=class_names, root=root)


class FolderSource:
    """Records of an image folder: the file path (decoded later) and its class."""

    def __init__(self, index: FolderIndex):
        self._index = index

    def __len__(self) -> int:
        return len(self._index.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self._index.files[i], "label": int(self._index.labels[i]), "caption": -1, "index": i}


# ---------------------------------------------------------------------------------------------- tfds


def _resolve_tfds_dir(path: str) -> str | None:
    """A prepared dataset directory: ``path`` itself or its latest version sub-folder."""
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    if os.path.isdir(path):
        versions = [
            d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "dataset_info.json"))
        ]
        if versions:
            best = max(versions, key=lambda v: tuple(int(x) if x.isdigit() else -1 for x in v.split(".")))
            return os.path.join(path, best)
    return None


def open_tfds_builder(name: str, data_dir: str | None) -> Any:
    """The tfds builder of a prepared dataset: a registered/prepared name, or a dataset directory."""
    import tensorflow_datasets as tfds

    from_path = os.sep in name or os.path.isdir(name)
    if from_path:
        resolved = _resolve_tfds_dir(name)
        if resolved is None:
            raise FileNotFoundError(
                f"Dataset directory {name!r} has no dataset_info.json: point config.data.tfds_name at "
                "a prepared tfds dataset (e.g. <data_dir>/imagenet2012/5.1.0) or give a dataset name."
            )
        builder = tfds.builder_from_directory(resolved)
    else:
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        missing = FileNotFoundError(
            f"Dataset {name!r} not found in {where}: prepare it with `tfds build {name} --data_dir "
            f"{where} --file_format array_record` or set config.data.data_dir."
        )
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except _dataset_not_found_error():
            raise missing from None
        if not builder.is_prepared():
            raise missing
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "array_record":
        raise ValueError(
            f"Dataset {name!r} is stored as {file_format}, which grain cannot read: prepare it again with "
            f"`tfds build {builder.name} --data_dir {data_dir or '<data_dir>'} --file_format array_record`."
        )
    return builder


def _dataset_not_found_error() -> type[Exception]:
    from tensorflow_datasets.core import registered

    return getattr(registered, "DatasetNotFoundError", ValueError)


class TfdsSource:
    """Records of a tfds array_record split; images are left encoded (decoded in the pipeline map)."""

    def __init__(self, builder: Any, split: str, *, image_key: str = "image", label_key: str | None = "label"):
        import tensorflow_datasets as tfds

        features = builder.info.features
        if image_key not in features:
            raise KeyError(
                f"Dataset {builder.name!r} has no feature {image_key!r} (it has {', '.join(features)}): "
                "set config.data.tfds_image_key."
            )
        decoders = {}
        if isinstance(features[image_key], tfds.features.Image):
            decoders[image_key] = tfds.decode.SkipDecoding()
        try:
            self._source = builder.as_data_source(split, decoders=decoders or None)
        except (KeyError, ValueError) as e:
            splits = ", ".join(builder.info.splits)
            raise ValueError(
                f"Dataset {builder.name!r} has no split {split!r} (it has {splits}): set "
                f"config.data.tfds_train_split / tfds_eval_split. ({e})"
            ) from None
        self._image_key = image_key
        self._label_key = label_key if label_key and label_key in features else None
        label_feature = features[self._label_key] if self._label_key else None
        self.class_names: tuple[str, ...] = tuple(getattr(label_feature, "names", None) or ())
        self.name = builder.name

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self._source[i]
        label = int(record[self._label_key]) if self._label_key else -1
        return {"image": record[self._image_key], "label": label, "caption": -1, "index": i}

