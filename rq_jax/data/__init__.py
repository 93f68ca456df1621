"""Stage-1 image data: grain pipelines over tfds array_record datasets, image folders and two
embedded datasets that need no download.

Entry points
------------
``build_image_pipeline(config.data, split="train", batch_size=B, seed=s) -> (iterator, info)``
    This host's batches ``{"image": float32 [B, S, S, 3] in [-1, 1], "label": int32 [B], "caption":
    int32 [B], "index": int32 [B]}``. The iterator has ``get_state()`` / ``set_state()``: save the
    state with the checkpoint and restore it to continue with exactly the same batches. ``info``
    (:class:`DataInfo`) gives the dataset used, example counts, classes, captions and ``skipped``, the
    live count of unreadable images that were dropped.
``eval_batches(config.data, batch_size=B, num_batches=n) -> (batches, info)``
    A fixed list of held-out batches (no shuffle, no augmentation) for PSNR / reconstruction grids.
``default_config(**overrides)``
    A ``ConfigDict`` with every field below at its default (generated from the ``DataConfig`` dataclass);
    missing fields take these defaults.

``config.data`` fields
----------------------
name
    ``"embedded"`` (default: ``emoji``, falling back to ``digits`` with one log message), ``"emoji"``
    (error if the font is missing), ``"digits"``, ``"folder"`` or ``"tfds"``.
data_dir
    tfds: the tfds data directory (None: tfds's default, ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``). Embedded datasets: where the rendered ``<name>_<size>.npz`` is cached
    (None: ``$RQ_JAX_DATA_DIR`` or ``~/.cache/rq_jax``).
image_size
    Side S of the square output images (default 64).
limit
    Use only this many examples (None: all). Embedded: an evenly spaced subset of the whole set,
    rendered and cached on its own; folder/tfds: the first ``limit`` of the split. For tests.
val_every
    Embedded data, and folders without a ``validation``/``val`` sub-folder: every ``val_every``-th
    image (in sorted order) is the validation split, the rest train (default 10; 0: no hold-out).
folder
    Root of an image folder: any format Pillow opens, searched recursively, hidden files ignored. If
    it has ``train/`` and ``val/`` (or ``validation/``) sub-folders they are the splits.
folder_labels
    Label each image by its first-level sub-folder (sorted class names; default True). Images without
    a class folder, or all images when this is False, get label -1 and ``info.num_classes == 0``.
tfds_name
    A prepared tfds dataset in array_record format, by name (``"imagenet2012"``, looked up in
    ``data_dir``) or by directory (``/data/imagenet2012/5.1.0``). Read through grain, no TensorFlow.
tfds_train_split, tfds_eval_split
    The tfds splits behind ``split="train"`` and ``split="validation"`` (defaults ``"train"``,
    ``"validation"``; slices such as ``"train[:1000]"`` work).
tfds_image_key, tfds_label_key
    Feature names of the image and the class label (``"image"``, ``"label"``; a missing label
    feature gives label -1).
font_path
    The Noto Color Emoji font (None: the usual system locations). Install it with
    ``apt-get install -y fonts-noto-color-emoji``.
background
    RGB background of the emoji images (default white).
skin_tones
    Emoji: keep the skin-tone variants (default True: 3,881 images, 59% of them "people & body";
    False: 1,991 images, classes more balanced). Same cache file either way.
random_crop
    Training: a random square crop (else the centre square); evaluation always uses the centre square.
min_crop_scale
    Training: the random square covers a uniform fraction in [min_crop_scale, 1] of the largest
    square's area (1.0, the default, is resize + random crop; the official FFHQ recipe uses 0.75).
random_flip
    Training: mirror left-right with probability 1/2 (default True).
resize_method
    ``"bilinear"`` (default, as torchvision's Resize), ``"bicubic"``, ``"lanczos"``, ``"box"``,
    ``"nearest"``.
num_threads, prefetch_buffer_size
    grain read threads (default None: one per core, at most 16) and elements read ahead (0: twice the
    batch size).
worker_count
    grain worker processes after batching (default 0: threads read faster, 749 images/s on 2 cores
    against 647-691 with workers and 645 for tf.data, benchmarks/RESULTS.md; workers need absl flags
    parsed, and their unreadable-image counts are not seen by ``info.skipped``).

An unknown ``name`` raises a ``ValueError`` that lists the valid ones; a missing dataset, folder or
font raises one sentence naming the path and how to fix it.
"""

from rq_jax.data.embedded import EMOJI_CLASSES, FONT_APT_COMMAND, EmbeddedDataset, load_embedded
from rq_jax.data.pipeline import (
    DATASETS,
    DataConfig,
    DataInfo,
    build_image_dataset,
    build_image_pipeline,
    default_config,
    eval_batches,
    resolve_config,
)
from rq_jax.data.sources import SkipCounter
from rq_jax.data.transforms import to_float, to_uint8

__all__ = [
    "DATASETS",
    "EMOJI_CLASSES",
    "FONT_APT_COMMAND",
    "DataConfig",
    "DataInfo",
    "EmbeddedDataset",
    "SkipCounter",
    "build_image_dataset",
    "build_image_pipeline",
    "default_config",
    "eval_batches",
    "load_embedded",
    "resolve_config",
    "to_float",
    "to_uint8",
]
