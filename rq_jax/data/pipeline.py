"""The stage-1 image pipeline: source -> host shard -> shuffle -> repeat -> decode/augment -> batch.

The config fields are documented in the package docstring (:mod:`rq_jax.data`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import grain
import ml_collections
import numpy as np

from rq_jax.data import embedded, sources, transforms
from rq_jax.schema import config_dict

log = logging.getLogger(__name__)

DATASETS = ("embedded", "emoji", "digits", "folder", "tfds")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Every field of ``config.data`` with its default (see the :mod:`rq_jax.data` docstring).

    Optional fields (``None``) become typed placeholders, so ``--config.data.limit=256`` works on the command line.
    """

    name: str = "embedded"
    data_dir: str | None = None
    image_size: int = 64
    limit: int | None = None
    val_every: int = 10
    # folder
    folder: str | None = None
    folder_labels: bool = True
    # tfds
    tfds_name: str | None = None
    tfds_train_split: str = "train"
    tfds_eval_split: str = "validation"
    tfds_image_key: str = "image"
    tfds_label_key: str = "label"
    # embedded
    font_path: str | None = None
    background: tuple[int, int, int] = (255, 255, 255)
    skin_tones: bool = True
    # augmentation (training split only)
    random_crop: bool = True
    min_crop_scale: float = 1.0
    random_flip: bool = True
    resize_method: str = "bilinear"
    # reading
    num_threads: int | None = None  # None: one per core, at most MAX_AUTO_THREADS
    prefetch_buffer_size: int = 0
    worker_count: int = 0


def default_config(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.data``: the `DataConfig` defaults with `overrides` applied (unknown names raise a ValueError)."""
    return config_dict(DataConfig(), overrides, "data config")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a pipeline reads; ``skipped`` keeps counting unreadable images while it runs."""

    dataset: str  # "emoji" | "digits" | "folder" | "tfds"
    description: str
    split: str
    num_examples: int  # in this split, over all hosts
    num_local_examples: int  # in this host's shard
    num_classes: int  # 0 when the data has no labels (then every label is -1)
    class_names: tuple[str, ...]
    # batch["caption"] indexes this; None: no captions (-1). Left out of repr: thousands of strings.
    captions: tuple[str, ...] | None = dataclasses.field(repr=False)
    image_size: int
    batch_size: int
    steps_per_epoch: int  # full batches per epoch on the smallest host
    skipped: sources.SkipCounter
    embedded: str | None  # "emoji" or "digits" when an embedded dataset was used, else None


def resolve_config(data_config: Mapping[str, Any] | ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
    """``data_config`` over the defaults; unknown fields are kept but logged (they may be typos)."""
    cfg = default_config()
    given = data_config.to_dict() if isinstance(data_config, ml_collections.ConfigDict) else dict(data_config or {})
    unknown = sorted(set(given) - set(cfg))
    if unknown:
        log.warning("config.data fields not used by the image pipeline: %s.", ", ".join(unknown))
    for key, value in given.items():
        if key in cfg:
            cfg[key] = value
    if cfg.name not in DATASETS:
        raise ValueError(
            f"Unknown config.data.name {cfg.name!r}: use one of {', '.join(repr(d) for d in DATASETS)}."
        )
    if cfg.resize_method not in transforms.RESAMPLE:
        raise ValueError(
            f"Unknown config.data.resize_method {cfg.resize_method!r}: use one of "
            f"{', '.join(repr(r) for r in transforms.RESAMPLE)}."
        )
    if int(cfg.image_size) <= 0:
        raise ValueError(f"config.data.image_size must be positive, got {cfg.image_size}.")
    if not 0.0 < float(cfg.min_crop_scale) <= 1.0:
        raise ValueError(f"config.data.min_crop_scale must be in (0, 1], got {cfg.min_crop_scale}.")
    return cfg


def cache_dir(cfg: ml_collections.ConfigDict) -> str:
    """The folder of rendered/downloaded datasets: config.data.data_dir, else $RQ_JAX_DATA_DIR, else ~/.cache/rq_jax."""
    root = cfg.data_dir or os.environ.get("RQ_JAX_DATA_DIR") or os.path.join("~", ".cache", "rq_jax")
    return os.path.expanduser(root)


_logged_once: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _logged_once:
        _logged_once.add(message)
        log.log(level, message)


def choose_embedded(cfg: ml_collections.ConfigDict) -> str:
    """'emoji' when it can be rendered (or is cached), else 'digits', saying so once."""
    size, limit = int(cfg.image_size), cfg.limit
    cached = os.path.isfile(embedded.cache_path(cache_dir(cfg), "emoji", size, limit))
    available, why = embedded.emoji_available(cfg.font_path)
    if cached or available:
        _log_once(
            logging.INFO,
            "Embedded dataset: 'emoji' (Noto Color Emoji rendered with Pillow); config.data.name = 'digits' "
            "selects the handwritten digits instead.",
        )
        return "emoji"
    _log_once(
        logging.WARNING,
        f"Embedded dataset: 'digits' (scikit-learn's 8x8 handwritten digits), because {why} to get the "
        "'emoji' dataset.",
    )
    return "digits"


def _open_source(cfg: ml_collections.ConfigDict, split: str) -> tuple[grain.MapDataset, sources.SourceMeta]:
    """The raw records of a split, as a grain dataset, and what to report about it."""
    name = cfg.name
    limit = None if cfg.limit is None else int(cfg.limit)
    if name in ("embedded", "emoji", "digits"):
        which = choose_embedded(cfg) if name == "embedded" else name
        data = embedded.load_embedded(
            which,
            cache_dir=cache_dir(cfg),
            image_size=int(cfg.image_size),
            font_path=cfg.font_path,
            limit=limit,
            background=tuple(cfg.background),
        )
        if which == "emoji" and not cfg.skin_tones:
            data = data.without_skin_tones()
        indices = data.split_indices(split, int(cfg.val_every))
        meta = sources.SourceMeta(
            dataset=which,
            description=f"{which} ({len(data):,} images at {cfg.image_size} px, cached in {data.path})",
            class_names=data.class_names,
            captions=data.captions,
        )
        return grain.MapDataset.source(sources.ArraySource(data, indices)), meta
    if name == "folder":
        index = sources.index_folder(
            cfg.folder, split, labels_from_subdirs=bool(cfg.folder_labels), val_every=int(cfg.val_every)
        )
        src = sources.FolderSource(index)
        meta = sources.SourceMeta("folder", f"image folder {index.root}", index.class_names, None)
    else:  # tfds
        if not cfg.tfds_name:
            raise ValueError("config.data.tfds_name is not set: give a tfds dataset name or directory.")
        builder = sources.open_tfds_builder(cfg.tfds_name, cfg.data_dir)
        tfds_split = {"train": cfg.tfds_train_split, "validation": cfg.tfds_eval_split}.get(split, split)
        src = sources.TfdsSource(
            builder, tfds_split, image_key=cfg.tfds_image_key, label_key=cfg.tfds_label_key
        )
        meta = sources.SourceMeta("tfds", f"tfds {builder.name}[{tfds_split}]", src.class_names, None)
    ds = grain.MapDataset.source(src)
    return (ds[:limit] if limit is not None else ds), meta


class _Preprocess:
    """Decode -> square crop + resize -> flip -> float32 in [-1, 1]; None for an unreadable image.

    ``__call__(record)`` is the evaluation path (centre crop); ``augment(record, rng)`` the training
    path for grain's ``random_map``, which seeds ``rng`` from the pipeline seed and the record's
    position, so augmentations are reproducible and survive a restore.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, counter: sources.SkipCounter, key_prefix: str):
        self.size = int(cfg.image_size)
        self.random_crop = bool(cfg.random_crop)
        self.min_scale = float(cfg.min_crop_scale)
        self.random_flip = bool(cfg.random_flip)
        self.resample = str(cfg.resize_method)
        self.counter = counter
        self.key_prefix = key_prefix

    def _decode(self, record: dict[str, Any], draft: int):
        image = record["image"]
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
            return image
        try:
            return transforms.decode_image(image, draft_size=draft)
        except Exception as e:  # any decoder failure means an unreadable image
            key = image if isinstance(image, str) else f"{self.key_prefix}#{record['index']}"
            self.counter.add(key, e)
            return None

    def _finish(self, record: dict[str, Any], image: np.ndarray) -> dict[str, Any]:
        return {
            "image": transforms.to_float(image),
            "label": np.int32(record["label"]),
            "caption": np.int32(record["caption"]),
            "index": np.int32(record["index"]),
        }

    def _crop(self, image, rng, min_scale: float) -> np.ndarray:
        if isinstance(image, np.ndarray):
            return transforms.crop_resize_array(image, self.size, rng, min_scale=min_scale, resample=self.resample)
        return transforms.crop_resize(image, self.size, rng, min_scale=min_scale, resample=self.resample)

    def __call__(self, record: dict[str, Any]) -> dict[str, Any] | None:
        image = self._decode(record, self.size)
        if image is None:
            return None
        return self._finish(record, self._crop(image, None, 1.0))

    def augment(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
        draft = math.ceil(self.size / math.sqrt(self.min_scale)) if self.random_crop else self.size
        image = self._decode(record, draft)
        if image is None:
            return None
        image = self._crop(image, rng if self.random_crop else None, self.min_scale)
        if self.random_flip:
            image = transforms.random_flip(image, rng)
        return self._finish(record, image)


MAX_AUTO_THREADS = 16


def default_threads() -> int:
    """grain read threads when config.data.num_threads is None: one per core, at most MAX_AUTO_THREADS.

    Threads, not worker processes, by default: JPEG decoding and resizing release the GIL, and on this
    project's 2-core machine threads read 749 images/s against 647-691 with 1-2 workers and 645 for tf.data
    (benchmarks/RESULTS.md, "Input pipelines")."""
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_THREADS))


def _is_valid(record: dict[str, Any] | None) -> bool:
    return record is not None


# How many images of a host's share are tried for one readable image before the source is given up.
PROBE_LIMIT = 256


def check_readable(ds: grain.MapDataset, preprocess: _Preprocess, description: str, split: str) -> None:
    """Raises one ValueError when none of the first PROBE_LIMIT images decodes (stops at the first that does).

    A training split is repeated and filtered for readable images: without this check a source where
    nothing decodes would spin forever, skipping, instead of failing.
    """
    tried = min(len(ds), PROBE_LIMIT)
    for i in range(tried):
        if preprocess(ds[i]) is not None:
            return
    examples = "; ".join(f"{k} ({v})" for k, v in list(preprocess.counter.skipped.items())[:2])
    scope = "any" if tried == len(ds) else f"the first {tried}"
    raise ValueError(
        f"None of {scope} of the {len(ds)} images of the {split} split of {description} could be read "
        f"({preprocess.counter.count} unreadable, e.g. {examples}); check the files or point the config at "
        "another folder."
    )


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, process_count={process_count}).")
    return int(process_index), int(process_count)


def build_image_dataset(
    data_config: Mapping[str, Any] | ml_collections.ConfigDict | None,
    *,
    split: str,
    batch_size: int,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle: bool | None = None,
    repeat: bool | None = None,
    augment: bool | None = None,
    drop_remainder: bool | None = None,
    subset: slice | None = None,
) -> tuple[grain.IterDataset, DataInfo]:
    """The pipeline as a grain ``IterDataset`` (see :func:`build_image_pipeline`).

    ``subset``: only these positions of the host's share (e.g. ``slice(a, b)`` with one process: the split's
    images ``a..b-1``, as the feature extraction reads them shard by shard); a subset is not probed for a
    readable image, its unreadable ones are just dropped and counted."""
    cfg = resolve_config(data_config)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    split = "validation" if split in ("val", "valid", "eval") else split
    train = split == "train"
    shuffle = train if shuffle is None else shuffle
    repeat = train if repeat is None else repeat
    augment = train if augment is None else augment
    drop_remainder = train if drop_remainder is None else drop_remainder
    process_index, process_count = _host(process_index, process_count)

    ds, meta = _open_source(cfg, split)
    total = len(ds)
    if total < process_count:
        raise ValueError(
            f"The {split} split of {meta.description} has {total} examples, fewer than the "
            f"{process_count} hosts that share it."
        )
    counter = sources.SkipCounter()
    preprocess = _Preprocess(cfg, counter, key_prefix=meta.description)

    ds = ds[process_index::process_count]  # each host reads a disjoint stride of the split
    if subset is not None:
        ds = ds[subset]
    num_local = len(ds)
    if subset is None:
        check_readable(ds, preprocess, meta.description, split)
    ds = ds.seed(int(seed) % 2**32)
    if shuffle:
        ds = ds.shuffle()  # reshuffled every epoch by the repeat below
    if repeat:
        ds = ds.repeat()
    ds = ds.random_map(preprocess.augment) if augment else ds.map(preprocess)
    ds = ds.filter(_is_valid)  # drops unreadable images (counted in `counter`)

    threads = default_threads() if cfg.num_threads is None else int(cfg.num_threads)
    buffer = int(cfg.prefetch_buffer_size) or (2 * batch_size if threads > 0 else 0)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer))
    it = it.batch(batch_size, drop_remainder=drop_remainder)
    if int(cfg.worker_count) > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(cfg.worker_count)))

    class_names = tuple(meta.class_names)
    info = DataInfo(
        dataset=meta.dataset,
        description=meta.description,
        split=split,
        num_examples=total,
        num_local_examples=num_local,
        num_classes=len(class_names),
        class_names=class_names,
        captions=meta.captions,
        image_size=int(cfg.image_size),
        batch_size=batch_size,
        steps_per_epoch=(total // process_count) // batch_size,
        skipped=counter,
        embedded=meta.dataset if meta.dataset in ("emoji", "digits") else None,
    )
    return it, info


def split_size(data_config: Mapping[str, Any] | ml_collections.ConfigDict | None, split: str) -> int:
    """The number of images of a split (after ``limit``), without reading any of them."""
    split = "validation" if split in ("val", "valid", "eval") else split
    return len(_open_source(resolve_config(data_config), split)[0])


def build_image_pipeline(
    data_config: Mapping[str, Any] | ml_collections.ConfigDict | None,
    *,
    split: str,
    batch_size: int,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle: bool | None = None,
    repeat: bool | None = None,
    augment: bool | None = None,
    drop_remainder: bool | None = None,
    subset: slice | None = None,
) -> tuple[grain.DatasetIterator, DataInfo]:
    """This host's batches of a split, as a checkpointable iterator, and what it reads.

    Batches are ``{"image": float32 [B, S, S, 3] in [-1, 1], "label": int32 [B], "caption": int32
    [B], "index": int32 [B]}`` with ``B = batch_size`` (per host) and ``S = image_size``; ``label``
    is -1 for unlabelled data, ``caption`` indexes ``info.captions`` (-1: none), ``index`` is the
    example's position in its split. The ``train`` split is shuffled (``seed``; a new order every
    epoch), repeated forever, augmented (random crop/flip) and batched with ``drop_remainder``; any
    other split (``validation``) is read once in order, centre-cropped, last batch kept. The flags
    override those defaults. ``iterator.get_state()`` / ``set_state()`` save and restore the position
    exactly. ``process_index`` / ``process_count`` default to JAX's.
    """
    it, info = build_image_dataset(
        data_config,
        split=split,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        shuffle=shuffle,
        repeat=repeat,
        augment=augment,
        drop_remainder=drop_remainder,
        subset=subset,
    )
    return iter(it), info


def eval_batches(
    data_config: Mapping[str, Any] | ml_collections.ConfigDict | None,
    *,
    batch_size: int,
    num_batches: int | None = None,
    split: str = "validation",
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[list[dict[str, np.ndarray]], DataInfo]:
    """A fixed held-out set of full batches (no shuffle, no augmentation), e.g. for PSNR.

    Every host gets the same number of batches (at most ``num_batches``; all that fit on the
    smallest host when None), drawn from its own shard, so a multi-host evaluation loop stays in step.
    The batches are kept in memory: bound ``num_batches`` for large splits.
    """
    it, info = build_image_dataset(
        data_config,
        split=split,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        shuffle=False,
        repeat=False,
        augment=False,
        drop_remainder=True,
    )
    available = info.steps_per_epoch
    if available == 0:
        raise ValueError(
            f"The {info.split} split of {info.description} has {info.num_examples} examples: too few for "
            f"one batch of {batch_size} per host; lower the batch size."
        )
    wanted = available if num_batches is None else min(int(num_batches), available)
    batches = []
    for batch in it:
        if len(batches) == wanted:
            break
        batches.append(batch)
    if not batches:
        raise ValueError(
            f"The {info.split} split of {info.description} has {info.num_examples} examples but only "
            f"{info.num_examples - info.skipped.count} readable ({info.skipped.count} unreadable): too few for one "
            f"batch of {batch_size} per host; add images or lower the evaluation batch size."
        )
    return batches, info
