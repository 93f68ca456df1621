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
    name is always complete; `abort()` (or a killed process) leaves only a temporary file behind."""

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


def write_json_atomic(path: str, obj: Any) -> None:
    """JSON written to a temporary file and renamed: readers see the old file or the new one, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def write_split(out_dir: str, split: str, arrays: dict[str, np.ndarray], *,
                records_per_shard: int | None = None) -> dict[str, Any]:
    """Writes one split given as whole arrays (`features` [N, h, w, C], `label`, `caption`, `flipped`,
    `source_index` [N]) as shards; returns its `meta["splits"][split]` entry. For small sets: tests, benchmarks."""
    n = len(arrays["features"])
    rps = int(records_per_shard or default_records_per_shard(arrays["features"].shape[1:]))
    count = -(-n // rps)
    shards = []
    for k in range(count):
        sl = slice(k * rps, min((k + 1) * rps, n))
        w = ShardWriter(os.path.join(out_dir, shard_name(split, k, count)))
        w.write(encode_records(arrays["features"][sl], arrays["source_index"][sl], arrays["label"][sl],
                               arrays["caption"][sl], arrays["flipped"][sl]))
        w.close()
        shards.append(dict(file=shard_name(split, k, count), num_records=w.num_records))
    return dict(num_records=n, num_images=int(len(np.unique(arrays["source_index"]))),
                flips=bool(np.any(arrays["flipped"])), shards=shards)


def write_feature_dir(out_dir: str, meta: dict[str, Any], codebook_KxC: np.ndarray,
                      splits: dict[str, dict[str, np.ndarray]], *, records_per_shard: int | None = None) -> dict:
    """A whole feature directory from arrays: the shards of every split, `codebook.npy` and `meta.json` (`meta`
    needs at least code_shape, codebook_size, embed_dim, num_classes, class_names, dataset); returns the meta."""
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "codebook.npy"), np.asarray(codebook_KxC, np.float32))
    meta = dict(meta, format=FORMAT, dtype="float16", codebook="codebook.npy",
                splits={s: write_split(out_dir, s, a, records_per_shard=records_per_shard) for s, a in splits.items()})
    meta.setdefault("q_tau", None)
    write_json_atomic(os.path.join(out_dir, "meta.json"), meta)
    return meta
