"""`python -m rq_jax.extract --rewrite DIR`: a feature directory of the old `.npz` format as ArrayRecord shards.

The old format kept each split in `<split>.npz` (or `<split>.<i>-of-<n>.npz`, one per extracting process)
with whole arrays `features`, `labels`, `captions`, `flipped` and `codebook`. The rewrite reads one file
at a time, writes the shards and `codebook.npy` beside it, and adds the new fields to `meta.json`. The
`.npz` files are kept. The old files did not record each image's index, so `source_index` is -1.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from rq_jax.data import feature_format as fmt
from rq_jax.data.features import feature_shape, legacy_npz_files

_NPZ_RE = re.compile(r"^(?P<split>[^.]+)(\.(?P<i>\d+)-of-(?P<n>\d+))?\.npz$")


def _npz_by_split(features_dir: str) -> dict[str, list[str]]:
    """{split: its .npz files in process order}."""
    found: dict[str, list[tuple[int, str]]] = {}
    for path in legacy_npz_files(features_dir):
        m = _NPZ_RE.match(os.path.basename(path))
        if m:
            found.setdefault(m["split"], []).append((int(m["i"] or 0), path))
    return {split: [p for _, p in sorted(files)] for split, files in found.items()}


def rewrite_npz_dir(features_dir: str, *, records_per_shard: int | None = None) -> dict:
    """Rewrites every `<split>*.npz` of `features_dir` as shards; returns the new meta dict."""
    meta_path = os.path.join(features_dir, "meta.json")
    by_split = _npz_by_split(features_dir) if os.path.isdir(features_dir) else {}
    if not by_split or not os.path.exists(meta_path):
        raise FileNotFoundError(f"{features_dir} has no .npz features with a meta.json to rewrite; extract the "
                                "features with `python -m rq_jax.extract --rqvae STAGE1_WORKDIR --out DIR`.")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") == fmt.FORMAT:
        return meta
    shape = feature_shape(meta)
    rps = int(records_per_shard or fmt.default_records_per_shard(shape))
    splits, codebook = {}, None
    for split, files in by_split.items():
        sizes = []
        for path in files:
            with np.load(path) as f:
                sizes.append(int(f["labels"].shape[0]))
        flips = bool(meta.get("flips")) and split == "train"
        with fmt.SplitWriter(features_dir, split, sum(sizes), rps, flips=flips) as writer:
            for path in files:  # one file in memory at a time
                with np.load(path) as f:
                    arrays = {key: f[key] for key in ("features", "labels", "captions", "flipped")}
                    codebook = f["codebook"] if codebook is None else codebook
                if tuple(arrays["features"].shape[1:]) != shape:
                    raise ValueError(f"{path} holds features of shape {arrays['features'].shape[1:]} but meta.json "
                                     f"says {shape}; extract the features again.")
                for i in range(0, len(arrays["labels"]), 4096):
                    part = {key: v[i:i + 4096] for key, v in arrays.items()}
                    writer.write(fmt.encode_records(part["features"], np.full(len(part["labels"]), -1),
                                                    part["labels"], part["captions"], part["flipped"]))
            splits[split] = writer.close()
    fmt.save_codebook(features_dir, codebook)
    meta.update(format=fmt.FORMAT, dtype="float16", codebook=fmt.CODEBOOK_FILE, splits=splits,
                rewritten_from=[os.path.basename(p) for files in by_split.values() for p in files])
    fmt.write_json_atomic(meta_path, meta)
    return meta
