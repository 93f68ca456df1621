"""The stage-2 feature dataset on disk: ArrayRecord shards of one record per image, plus `meta.json`.

Layout of a feature directory `DIR` (written by `python -m rq_jax.extract`):

  DIR/meta.json                        what the records are (below); written last, by process 0
  DIR/codebook.npy                     float32 [K, C], the frozen stage-1 codebook
  DIR/captions.json                    the caption strings that `caption` indexes (text datasets only)
  DIR/extract_plan.json                the extraction's settings: a rerun resumes only the same plan
  DIR/<split>/<split>-NNNNN-of-MMMMM.array_record   shard NNNNN holds the images of split indices
                                       [NNNNN * images_per_shard, (NNNNN + 1) * images_per_shard)

Shards are written whole to a temporary name and renamed, so a shard under its final name is complete.
They use `group_size:1` (random access by index, as grain requires) and no compression (float16
features of a trained encoder do not compress).

One record is `RECORD_HEADER` (24 bytes, little-endian) followed by the features:

  source_index int64    the image's index in its split (-1: unknown, in sets rewritten from `.npz`)
  label        int32    class id (-1: none)
  caption      int32    index into captions.json (-1: none)
  flipped      uint8    1: the features of the horizontally mirrored image
  (7 bytes of padding, so the features start 8-byte aligned)
  features     float16  [h, w, C] in C order (h, w, C: `meta["code_shape"][:2]`, `meta["embed_dim"]`)

`meta.json` has the stage-1 run (`rqvae_workdir`, `rqvae_step`), `code_shape`, `codebook_size`, `embed_dim`,
`image_size`, `num_classes`, `class_names`, `dataset`, `flips`, `q_tau` (the soft-label table on a bounded
sample of the training features), `format` (FORMAT), `dtype` and, per split,
`splits.<split> = {"num_records", "num_images", "shards": [{"file", "num_records"}, ...]}`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

FORMAT = "rq_jax.features.array_record.v1"
WRITER_OPTIONS = "group_size:1,uncompressed"
HEADER_BYTES = 24
CODEBOOK_FILE = "codebook.npy"
TARGET_SHARD_BYTES = 1 << 30  # about 1 GiB per shard
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.array_record$")


def record_dtype(feature_shape: tuple[int, ...]) -> np.dtype:
    """The numpy structured dtype of one record (header + float16 features), for zero-copy decoding."""
    return np.dtype([("source_index", "<i8"), ("label", "<i4"), ("caption", "<i4"), ("flipped", "u1"),
                     ("_pad", "V7"), ("features", "<f2", tuple(int(s) for s in feature_shape))])


def encode_records(features_BxhxwxC: np.ndarray, source_index_B: np.ndarray, label_B: np.ndarray,
                   caption_B: np.ndarray, flipped_B: np.ndarray) -> list[bytes]:
    """One record (bytes) per row: the layout of the module docstring."""
    dt = record_dtype(features_BxhxwxC.shape[1:])
    rec = np.zeros(len(features_BxhxwxC), dt)
    rec["source_index"], rec["label"], rec["caption"] = source_index_B, label_B, caption_B
    rec["flipped"] = np.asarray(flipped_B, bool)
    rec["features"] = features_BxhxwxC.astype(np.float16)
    return [r.tobytes() for r in rec]


def decode_records(records: list[bytes], feature_shape: tuple[int, ...]) -> np.ndarray:
    """The records (all of one feature shape) as one structured array (`record_dtype`)."""
    dt = record_dtype(feature_shape)
    for r in records:
        if len(r) != dt.itemsize:
            raise ValueError(f"A feature record has {len(r)} bytes where features {tuple(feature_shape)} take "
                             f"{dt.itemsize}: the shards do not match their meta.json; extract them again.")
    return np.frombuffer(b"".join(records), dt)


def shard_name(split: str, index: int, count: int) -> str:
    """`<split>/<split>-NNNNN-of-MMMMM.array_record`, relative to the feature directory."""
    return f"{split}/{split}-{index:05d}-of-{count:05d}.array_record"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    """(split, index, count) of a shard's file name, None for any other file."""
    m = _SHARD_RE.match(os.path.basename(name))
    return (m["split"], int(m["index"]), int(m["count"])) if m else None


def default_records_per_shard(feature_shape: tuple[int, ...]) -> int:
    """About TARGET_SHARD_BYTES of records, an even number (an image and its flip stay in one shard)."""
    n = TARGET_SHARD_BYTES // record_dtype(feature_shape).itemsize
    return max(2, n - n % 2)


class ShardWriter:
    """Writes one shard to `<path>.tmp-<pid>` and renames it to `path` on `close()`: a shard under its final
    name is always complete; `abort()` removes the temporary file (a killed process leaves it behind, and the
    next extraction of that shard removes it)."""

    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path, self.tmp = path, f"{path}.tmp-{os.getpid()}"
        self._writer = ArrayRecordWriter(self.tmp, WRITER_OPTIONS)
        self.num_records = 0

    def write(self, records: list[bytes]) -> None:
        for r in records:
            self._writer.write(r)
        self.num_records += len(records)

    def close(self) -> None:
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def shard_num_records(path: str) -> int:
    """The number of records in one shard file (reads its footer only)."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return int(reader.num_records())
    finally:
        reader.close()


def save_codebook(out_dir: str, codebook_KxC: Any) -> None:
    """`codebook.npy` (float32 [K, C]), written to a temporary name and renamed."""
    tmp = os.path.join(out_dir, f"codebook.tmp-{os.getpid()}.npy")
    np.save(tmp, np.asarray(codebook_KxC, np.float32))
    os.replace(tmp, os.path.join(out_dir, CODEBOOK_FILE))


def write_json_atomic(path: str, obj: Any) -> None:
    """JSON written to a temporary file and renamed: readers see the old file or the new one, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


class SplitWriter:
    """Writes the records of one split, in order, as shards of `records_per_shard` (the last may be shorter);
    `close()` returns the split's `meta["splits"][split]` entry. `total` (the number of records) fixes the shard
    names' `-of-MMMMM`. A context manager: an error aborts the shard being written."""

    def __init__(self, out_dir: str, split: str, total: int, records_per_shard: int, *, flips: bool = False,
                 num_images: int | None = None):
        self.out_dir, self.split, self.total, self.rps = out_dir, split, int(total), int(records_per_shard)
        self.count = -(-self.total // self.rps)
        self.flips, self.num_images = flips, num_images
        self.shards: list[dict[str, Any]] = []
        self._writer: ShardWriter | None = None

    def write(self, records: list[bytes]) -> None:
        for r in records:
            if self._writer is None:
                self._writer = ShardWriter(os.path.join(self.out_dir, shard_name(self.split, len(self.shards),
                                                                                 self.count)))
            self._writer.write([r])
            if self._writer.num_records == self.rps:
                self._close_shard()

    def _close_shard(self) -> None:
        self._writer.close()
        self.shards.append(dict(file=shard_name(self.split, len(self.shards), self.count),
                                num_records=self._writer.num_records))
        self._writer = None

    def close(self) -> dict[str, Any]:
        if self._writer is not None:
            self._close_shard()
        written = sum(s["num_records"] for s in self.shards)
        if written != self.total:
            raise ValueError(f"{written} records were written to the {self.split!r} split, not the {self.total} "
                             "announced.")
        return dict(num_records=written, num_images=self.num_images, flips=self.flips, shards=self.shards)

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None and self._writer is not None:
            self._writer.abort()


def write_split(out_dir: str, split: str, arrays: dict[str, np.ndarray], *,
                records_per_shard: int | None = None) -> dict[str, Any]:
    """Writes one split given as whole arrays (`features` [N, h, w, C], `label`, `caption`, `flipped`,
    `source_index` [N]) as shards; returns its `meta["splits"][split]` entry. For small sets: tests, benchmarks."""
    n = len(arrays["features"])
    rps = int(records_per_shard or default_records_per_shard(arrays["features"].shape[1:]))
    with SplitWriter(out_dir, split, n, rps, flips=bool(np.any(arrays["flipped"])),
                     num_images=int(len(np.unique(arrays["source_index"])))) as w:
        for start in range(0, n, rps):
            sl = slice(start, start + rps)
            w.write(encode_records(arrays["features"][sl], arrays["source_index"][sl], arrays["label"][sl],
                                   arrays["caption"][sl], arrays["flipped"][sl]))
        return w.close()


def write_feature_dir(out_dir: str, meta: dict[str, Any], codebook_KxC: np.ndarray,
                      splits: dict[str, dict[str, np.ndarray]], *, records_per_shard: int | None = None) -> dict:
    """A whole feature directory from arrays: the shards of every split, `codebook.npy` and `meta.json` (`meta`
    needs at least code_shape, codebook_size, embed_dim, num_classes, class_names, dataset); returns the meta."""
    os.makedirs(out_dir, exist_ok=True)
    save_codebook(out_dir, codebook_KxC)
    meta = dict(meta, format=FORMAT, dtype="float16", codebook=CODEBOOK_FILE,
                splits={s: write_split(out_dir, s, a, records_per_shard=records_per_shard) for s, a in splits.items()})
    meta.setdefault("q_tau", None)
    write_json_atomic(os.path.join(out_dir, "meta.json"), meta)
    return meta
