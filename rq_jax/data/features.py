"""Stage-2 data: the extracted RQ-VAE feature maps (`python -m rq_jax.extract`) as a grain pipeline.

The features live in ArrayRecord shards (layout: `rq_jax.data.feature_format`) read lazily by index through
grain's ArrayRecord data source: each process opens only the shards of its own contiguous index range, so
host memory does not grow with the dataset. Batches are `{"features": float32 [B, h, w, C], "label": int32
[B], "caption": int32 [B], "flipped": bool [B], "source_index": int64 [B]}`; codes and soft labels are drawn
from them on the device at every step (stochastic sampling, Sec. 3.2.3). The iterator has
`get_state`/`set_state` like the image pipelines, so it is saved with checkpoints.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import grain
import numpy as np

from rq_jax.data import feature_format as fmt

EXTRACT_HINT = "`python -m rq_jax.extract --rqvae STAGE1_WORKDIR --out DIR`"


class LegacyFeaturesError(ValueError):
    """A feature directory in the old whole-array `.npz` format."""


def legacy_npz_files(features_dir: str) -> list[str]:
    """The `.npz` feature files of the old format in a directory (`<split>.npz`, `<split>.<i>-of-<n>.npz`)."""
    return sorted(glob.glob(os.path.join(features_dir, "*.npz")))


def load_meta(features_dir: str, *, require_shards: bool = True) -> dict[str, Any]:
    """`meta.json` of a feature directory; one-sentence errors for a missing one and, unless `require_shards`
    is False (what a sampler reads of it: classes, the stage-1 run), for the old `.npz` format."""
    if not features_dir:
        raise FileNotFoundError(
            f"config.data.features_dir is not set: extract the stage-2 features with {EXTRACT_HINT} and pass "
            "--config.data.features_dir=DIR."
        )
    path = os.path.join(features_dir, "meta.json")
    if not os.path.exists(path):
        if legacy_npz_files(features_dir):
            raise legacy_error(features_dir)
        raise FileNotFoundError(
            f"{path} does not exist: {features_dir} is not a stage-2 feature directory (or its extraction has not "
            f"finished; rerunning it resumes); create one with {EXTRACT_HINT}."
        )
    with open(path) as f:
        meta = json.load(f)
    if require_shards and meta.get("format") != fmt.FORMAT:
        raise legacy_error(features_dir)
    return meta


def legacy_error(features_dir: str) -> LegacyFeaturesError:
    return LegacyFeaturesError(
        f"{features_dir} holds stage-2 features in the old .npz format, which every host would read whole into "
        f"memory; rewrite them as ArrayRecord shards with `python -m rq_jax.extract --rewrite {features_dir}` "
        "(no re-encoding; the .npz files are kept)."
    )


def feature_shape(meta: dict[str, Any]) -> tuple[int, int, int]:
    """(h, w, C) of one record's features."""
    return int(meta["code_shape"][0]), int(meta["code_shape"][1]), int(meta["embed_dim"])


class FeatureSource:
    """Random access over one split of a feature directory: `len()` records, `[i]` a dict with `features`
    (float32 [h, w, C]), `label`, `caption`, `flipped` and `source_index`; `read(indices)` a batch of them.

    Nothing is read at construction but `meta.json` and the codebook; shards are opened on first access.
    """

    def __init__(self, features_dir: str, split: str, *, meta: dict[str, Any] | None = None):
        self.meta = load_meta(features_dir) if meta is None else meta
        splits = self.meta["splits"]
        if split not in splits:
            raise FileNotFoundError(
                f"{features_dir} has no {split!r} split (it has {sorted(splits)}); extract it with {EXTRACT_HINT}."
            )
        self.features_dir, self.split = features_dir, split
        self.shape = feature_shape(self.meta)
        self.num_records = int(splits[split]["num_records"])
        shards = [s for s in splits[split]["shards"] if int(s["num_records"]) > 0]
        for s in shards:
            if not os.path.exists(os.path.join(features_dir, s["file"])):
                raise FileNotFoundError(
                    f"{os.path.join(features_dir, s['file'])} is missing: the feature directory is incomplete; "
                    f"copy the whole directory or extract it again with {EXTRACT_HINT}."
                )
        paths = [f"{os.path.join(features_dir, s['file'])}[0:{int(s['num_records'])}]" for s in shards]
        self._source = grain.sources.ArrayRecordDataSource(paths) if paths else None
        self.codebook = np.load(os.path.join(features_dir, self.meta.get("codebook", fmt.CODEBOOK_FILE)))

    def __len__(self) -> int:
        return self.num_records

    def read(self, indices: Any) -> dict[str, np.ndarray]:
        """The records at `indices` as a batch (one batched read per shard, decoded without copies)."""
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        rec = fmt.decode_records(list(self._source.__getitems__(idx)) if idx else [], self.shape)
        return {"features": rec["features"].astype(np.float32), "label": rec["label"].astype(np.int32),
                "caption": rec["caption"].astype(np.int32), "flipped": rec["flipped"].astype(bool),
                "source_index": rec["source_index"].astype(np.int64)}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= int(i) < self.num_records:
            raise IndexError(f"record {i} is outside the {self.num_records} records of {self.split!r}")
        return {k: v[0] for k, v in self.read([i]).items()}

    def sample_vectors(self, max_vectors: int, *, max_records: int = 4096, seed: int = 0,
                       chunk: int = 256) -> np.ndarray:
        """float32 [m, C]: a fixed random subset of m = min(max_vectors, all) feature vectors of at most
        `max_records` random records, for statistics such as the Q_tau table. The records are read `chunk` at a
        time and only the chosen vectors kept, so memory is bounded by `max_vectors`, not by the split."""
        rng = np.random.default_rng(seed)
        n, per = self.num_records, self.shape[0] * self.shape[1]
        records = np.arange(n) if n <= max_records else np.sort(rng.choice(n, max_records, replace=False))
        total = len(records) * per
        keep = np.arange(total) if total <= max_vectors else np.sort(rng.choice(total, max_vectors, replace=False))
        out = np.empty((len(keep), self.shape[2]), np.float32)
        done = 0
        for start in range(0, len(records), chunk):
            lo, hi = np.searchsorted(keep, [start * per, min(start + chunk, len(records)) * per])
            if hi > lo:
                flat = self.read(records[start:start + chunk])["features"].reshape(-1, self.shape[2])
                out[done:done + hi - lo] = flat[keep[lo:hi] - start * per]
                done += hi - lo
        return out


def process_range(num_records: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of this process's contiguous share of the records (sizes differ by at most one)."""
    return num_records * process_index // process_count, num_records * (process_index + 1) // process_count


class _ReadBatch:
    """A batch of record indices -> the decoded batch (picklable, for grain worker processes)."""

    def __init__(self, source: FeatureSource):
        self.source = source

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return self.source.read(indices)


def build_feature_pipeline(features_dir: str, *, split: str, batch_size: int, seed: int = 0,
                           train: bool | None = None, process_index: int | None = None,
                           process_count: int | None = None, read_threads: int = 2, prefetch_batches: int = 4):
    """(iterator, source) over this process's contiguous share of a split; train: shuffled, repeated, full batches.

    The pipeline shuffles and batches record *indices*, then reads each batch in one call, so a batch costs
    one read per shard it touches and one decode. `read_threads` threads read up to `prefetch_batches`
    batches ahead (grain's default, 500 elements ahead, would be 500 whole batches: gigabytes of host memory).
    """
    import jax

    train = split == "train" if train is None else train
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    src = FeatureSource(features_dir, split)
    start, stop = process_range(len(src), pi, pc)
    if stop <= start:
        raise ValueError(f"The {split!r} split of {features_dir} has {len(src)} records, fewer than the {pc} "
                         f"processes that share it; extract more images or use fewer processes.")
    ds = grain.MapDataset.range(start, stop)
    if train:
        ds = ds.seed(int(seed) % 2**32).shuffle().repeat()
    ds = ds.batch(batch_size, drop_remainder=train).map(_ReadBatch(src))
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    return ds.to_iter_dataset(options).__iter__(), src
