"""Stage-2 data: the extracted RQ-VAE feature maps (`python -m rq_jax.extract`) as a grain pipeline.

Batches are `{"features": float32 [B, h, w, C], "label": int32 [B], "caption": int32 [B]}`; codes and
soft labels are drawn from them on the device at every step (stochastic sampling, Sec. 3.2.3). The
iterator has `get_state`/`set_state` like the image pipelines, so it is saved with checkpoints.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import numpy as np


class FeatureSource:
    """Random access over one split's `.npz` of features (memory-mapped where possible)."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist: extract the stage-2 features first with "
                "`python -m rq_jax.extract --rqvae STAGE1_WORKDIR --out DIR` and set config.data.features_dir=DIR."
            )
        with np.load(path) as f:
            self.features = f["features"]
            self.labels = f["labels"]
            self.captions = f["captions"]
            self.codebook = f["codebook"]

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"features": self.features[i].astype(np.float32), "label": self.labels[i],
                "caption": self.captions[i]}


def load_meta(features_dir: str) -> dict[str, Any]:
    if not features_dir:
        raise FileNotFoundError(
            "config.data.features_dir is not set: extract the stage-2 features with `python -m rq_jax.extract "
            "--rqvae STAGE1_WORKDIR --out DIR` and pass --config.data.features_dir=DIR."
        )
    path = os.path.join(features_dir, "meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: {features_dir} is not a stage-2 feature directory; create one with "
            "`python -m rq_jax.extract --rqvae STAGE1_WORKDIR --out DIR`."
        )
    with open(path) as f:
        return json.load(f)


def build_feature_pipeline(features_dir: str, *, split: str, batch_size: int, seed: int = 0,
                           train: bool | None = None, process_index: int | None = None,
                           process_count: int | None = None):
    """(iterator, source) over this host's shard of a split; train: shuffled, repeated, full batches."""
    train = split == "train" if train is None else train
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    src = FeatureSource(os.path.join(features_dir, f"{split}.npz"))
    ds = grain.MapDataset.source(src)[pi::pc]
    if train:
        ds = ds.shuffle(seed=seed).repeat()
    ds = ds.batch(batch_size, drop_remainder=train)
    return ds.to_iter_dataset().__iter__(), src
