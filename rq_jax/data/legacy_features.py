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
from rq_jax.data.features import legacy_npz_files

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
    shape = (int(meta["code_shape"][0]), int(meta["code_shape"][1]), int(meta["embed_dim"]))
    rps = int(records_per_shard or fmt.default_records_per_shard(shape))
    splits, codebook = {}, None
    for split, files in by_split.items():
        sizes = []
        for path in files:
            with np.load(path) as f:
                sizes.append(int(f["labels"].shape[0]))
        total = sum(sizes)
        count = -(-total // rps)
        shards, writer, k = [], None, 0
        for path in files:  # one file in memory at a time
            with np.load(path) as f:
                arrays = {key: f[key] for key in ("features", "labels", "captions", "flipped")}
                codebook = f["codebook"] if codebook is None else codebook
            if tuple(arrays["features"].shape[1:]) != shape:
                raise ValueError(f"{path} holds features of shape {arrays['features'].shape[1:]} but meta.json says "
                                 f"{shape}; extract the features again.")
            for i in range(len(arrays["labels"])):
                if writer is None:
                    writer = fmt.ShardWriter(os.path.join(features_dir, fmt.shard_name(split, k, count)))
                writer.write(fmt.encode_records(arrays["features"][i:i + 1], np.array([-1]), arrays["labels"][i:i + 1],
                                                arrays["captions"][i:i + 1], arrays["flipped"][i:i + 1]))
                if writer.num_records == rps:
                    writer.close()
                    shards.append(dict(file=fmt.shard_name(split, k, count), num_records=writer.num_records))
                    writer, k = None, k + 1
        if writer is not None:
            writer.close()
            shards.append(dict(file=fmt.shard_name(split, k, count), num_records=writer.num_records))
        splits[split] = dict(num_records=total, num_images=None, flips=bool(meta.get("flips")) and split == "train",
                             shards=shards)
    tmp = os.path.join(features_dir, f"codebook.tmp-{os.getpid()}.npy")
    np.save(tmp, np.asarray(codebook, np.float32))
    os.replace(tmp, os.path.join(features_dir, "codebook.npy"))
    meta.update(format=fmt.FORMAT, dtype="float16", codebook="codebook.npy", splits=splits,
                rewritten_from=[os.path.basename(p) for files in by_split.values() for p in files])
    fmt.write_json_atomic(meta_path, meta)
    return meta
