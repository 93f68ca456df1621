"""A small CNN judge of generated images, trained offline on the real data (emoji / digits of the demo).

Why: the demo has no pretrained Inception (its weights are a download), so its conditional samples are
judged by a classifier trained here, in about a minute on a 2-core CPU, on the real training split of
the same `config.data`:

  * conditional accuracy: the fraction of samples the judge classifies as their requested class
    (chance: 1 / num_classes);
  * "demo FID": the Fréchet distance between the judge's penultimate features (128-d, the ReLU output
    of the dense layer before the classifier) of the samples and of the real training images. It is
    only comparable with itself (same judge, same number of samples), never with Inception FIDs.

`train_judge(data_config, steps=..., out_path=...)` trains and saves one (`.npz`: weights + metadata),
`load_judge(path)` reads it back, `predict(model, images)` gives (logits, features); `judge_samples`
is the `python -m rq_jax.evaluate judge` command. The CNN: 3 x (3x3 conv, GroupNorm, ReLU, 2x2 pool) with
16/32/64 channels, global mean pool, dense 128 (the features), classifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

log = logging.getLogger(__name__)

FEATURE_DESCRIPTION = "judge CNN penultimate 128-d features, trained on the embedded set"
JUDGE_FORMAT_VERSION = 1


class JudgeCNN(nnx.Module):
    """Three conv blocks (3x3 conv, GroupNorm, ReLU, 2x2 average pool) + global mean pool + dense + classifier.

    Input: images [B, S, S, 3] in [-1, 1]. `features` is the penultimate `feature_dim` activation.
    """

    def __init__(self, num_classes: int, *, width: int = 16, feature_dim: int = 128, image_size: int = 32,
                 rngs: nnx.Rngs):
        if num_classes < 2:
            raise ValueError(f"A judge needs labelled data with at least 2 classes, got {num_classes}.")
        self.num_classes, self.width, self.feature_dim, self.image_size = num_classes, width, feature_dim, image_size
        chans = (3, width, 2 * width, 4 * width)
        self.convs = nnx.List([nnx.Conv(chans[i], chans[i + 1], (3, 3), rngs=rngs) for i in range(3)])
        self.norms = nnx.List([nnx.GroupNorm(chans[i + 1], num_groups=8, rngs=rngs) for i in range(3)])
        self.dense = nnx.Linear(chans[-1], feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

    def features(self, x_BHWC: jax.Array) -> jax.Array:
        """Penultimate activations [B, feature_dim] (after ReLU): the demo-FID feature space."""
        h = x_BHWC
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = jax.nn.relu(norm(conv(h)))
            h = nnx.avg_pool(h, (2, 2), strides=(2, 2))
        h = jnp.mean(h, axis=(1, 2))
        return jax.nn.relu(self.dense(h))

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        """Class logits [B, num_classes]."""
        return self.head(self.features(x_BHWC))


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------
def load_split(data_config: Any, split: str, *, max_images: int | None = None, batch_size: int = 256
               ) -> tuple[np.ndarray, np.ndarray, Any]:
    """(images float32 [N, S, S, 3] in [-1, 1], labels int32 [N], DataInfo) of a whole split, in order.

    Read once without augmentation (centre crops), so training can augment in memory cheaply; `max_images`
    bounds it for large datasets (the first images of the split).
    """
    from rq_jax.data.pipeline import build_image_dataset

    it, info = build_image_dataset(data_config, split=split, batch_size=batch_size, process_index=0,
                                   process_count=1, shuffle=False, repeat=False, augment=False, drop_remainder=False)
    images, labels, n = [], [], 0
    for batch in it:
        images.append(np.asarray(batch["image"], np.float32))
        labels.append(np.asarray(batch["label"], np.int32))
        n += images[-1].shape[0]
        if max_images is not None and n >= max_images:
            break
    if n == 0:
        raise ValueError(f"The {info.split} split of {info.description} holds no images.")
    x, y = np.concatenate(images)[:max_images], np.concatenate(labels)[:max_images]
    return x, y, info


def data_config_from_file(path: str) -> Any:
    """`get_config().data` of a config `.py` file ("PATH[:arg]", as `configs/rqvae/demo.py`)."""
    from rq_jax.config_lib import load_config_file

    config = load_config_file(path)
    if "data" not in config:
        raise ValueError(f"The config of {path!r} has no `data` section.")
    return config.data


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------
def _augment(x_BHWC: jax.Array, key: jax.Array, max_shift: int, flip: bool) -> jax.Array:
    """Light augmentation: a random translation of up to `max_shift` pixels (edge padding), an optional
    left-right flip and a small brightness/contrast jitter, so the judge does not memorise exact pixels."""
    b, h, w, _ = x_BHWC.shape
    k_shift, k_flip, k_gain, k_bias = jax.random.split(key, 4)
    padded = jnp.pad(x_BHWC, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    offsets = jax.random.randint(k_shift, (b, 2), 0, 2 * max_shift + 1)
    x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1])))(padded, offsets)
    if flip:
        x = jnp.where(jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1)), x[:, :, ::-1], x)
    gain = jax.random.uniform(k_gain, (b, 1, 1, 1), minval=0.9, maxval=1.1)
    bias = jax.random.uniform(k_bias, (b, 1, 1, 1), minval=-0.1, maxval=0.1)
    return jnp.clip(x * gain + bias, -1.0, 1.0)


def predict(model: JudgeCNN, images: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], features [N, feature_dim]) as float64 of float images in [-1, 1] or uint8 images.

    Images of another size than the judge's are resized (bilinear) to it.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Images must be [N, H, W, 3], got shape {images.shape}.")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 127.5 - 1.0
    graph, state = nnx.split(model)

    @jax.jit
    def fn(state, x):
        m = nnx.merge(graph, state)
        if x.shape[1:3] != (m.image_size, m.image_size):
            x = jax.image.resize(x, (x.shape[0], m.image_size, m.image_size, 3), "bilinear")
        f = m.features(x)
        return m.head(f), f

    n = images.shape[0]
    bs = max(1, min(batch_size, n))
    logits, feats = [], []
    for start in range(0, n, bs):
        chunk = np.asarray(images[start : start + bs], np.float32)
        k = chunk.shape[0]
        if k < bs:  # pad: one compilation
            chunk = np.concatenate([chunk, np.zeros((bs - k, *chunk.shape[1:]), np.float32)])
        lo, fe = fn(state, jnp.asarray(chunk))
        logits.append(np.asarray(lo, np.float64)[:k])
        feats.append(np.asarray(fe, np.float64)[:k])
    return np.concatenate(logits), np.concatenate(feats)


def _make_train_step(num_classes: int, size: int, flip: bool) -> Any:
    """The jitted AdamW step: augment, label-smoothed cross-entropy; returns (loss, batch accuracy)."""

    @nnx.jit
    def train_step(model, optimizer, x, y, key):
        x = _augment(x, key, max_shift=max(1, size // 16), flip=flip)

        def loss_fn(model):
            logits = model(x)
            targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes), 0.1)
            return optax.softmax_cross_entropy(logits, targets).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    return train_step


def _sampling_probs(labels_N: np.ndarray, num_classes: int, balanced: bool) -> np.ndarray:
    """Per-image draw probabilities: 1 / (its class count) when `balanced`, so rare classes (the emoji are
    59% "people & body") are learnt and every requested class is judged fairly; else uniform."""
    counts = np.bincount(labels_N, minlength=num_classes)
    probs = 1.0 / counts[labels_N] if balanced else np.ones(labels_N.shape[0])
    return probs / probs.sum()


def train_judge(
    data_config: Mapping[str, Any] | Any,
    *,
    steps: int = 1200,
    batch_size: int = 64,
    seed: int = 0,
    out_path: str | None = None,
    lr: float = 5e-3,
    width: int = 16,
    feature_dim: int = 128,
    max_images: int | None = 50_000,
    balanced: bool = True,
) -> tuple[JudgeCNN, float]:
    """Trains a judge on the real training split of `data_config`; returns (model, validation accuracy).

    AdamW with warmup + cosine decay, label smoothing 0.1, class-balanced batches (`balanced`);
    augmentation as `_augment` (flips only when `data_config.random_flip`, off in the demo because emoji
    include text-like symbols). The accuracy is on the held-out `validation` split. With `out_path` the
    weights and metadata are saved there.
    """
    from rq_jax.data.pipeline import resolve_config

    t0 = time.perf_counter()
    cfg = resolve_config(data_config)
    x_train, y_train, info = load_split(cfg, "train", max_images=max_images)
    x_val, y_val, _ = load_split(cfg, "validation", max_images=max_images)
    if info.num_classes < 2 or (y_train < 0).any():
        raise ValueError(f"{info.description} has no class labels: a judge needs labelled data.")
    size, num_classes = int(x_train.shape[1]), info.num_classes
    model = JudgeCNN(num_classes, width=width, feature_dim=feature_dim, image_size=size, rngs=nnx.Rngs(seed))
    warmup = max(1, min(50, steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=lr * 0.02)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    train_step = _make_train_step(num_classes, size, bool(cfg.random_flip))

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    bs = min(batch_size, x_train.shape[0])
    probs = _sampling_probs(y_train, num_classes, balanced)
    for step in range(steps):
        idx = rng.choice(x_train.shape[0], bs, replace=True, p=probs)
        loss, acc = train_step(model, optimizer, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]),
                               jax.random.fold_in(key, step))
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            log.info("judge step %d/%d: loss %.3f, batch accuracy %.3f", step + 1, steps, float(loss), float(acc))
    logits, _ = predict(model, x_val)
    val_accuracy = float(np.mean(np.argmax(logits, -1) == y_val))
    seconds = time.perf_counter() - t0
    log.info("judge trained in %.1f s on %s: validation accuracy %.3f (%d images; chance %.3f)", seconds,
             info.description, val_accuracy, y_val.shape[0], 1.0 / num_classes)
    if out_path:
        save_judge(out_path, model, meta=dict(
            dataset=info.description, class_names=list(info.class_names), val_accuracy=val_accuracy,
            num_val=int(y_val.shape[0]), num_train=int(y_train.shape[0]), steps=steps, batch_size=bs, seed=seed,
            train_seconds=seconds,
        ))
    return model, val_accuracy


# ---------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------
def _flat_params(model: nnx.Module) -> list[tuple[tuple, Any]]:
    return list(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _key(path: tuple) -> str:
    return "param/" + "/".join(str(p) for p in path)


def save_judge(path: str, model: JudgeCNN, *, meta: dict[str, Any] | None = None) -> str:
    """Writes the judge's parameters and its metadata (architecture, dataset, accuracy) to an `.npz`."""
    arrays = {_key(k): np.asarray(v.get_value()) for k, v in _flat_params(model)}
    meta = dict(meta or {}, version=JUDGE_FORMAT_VERSION, num_classes=model.num_classes, width=model.width,
                feature_dim=model.feature_dim, image_size=model.image_size)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:  # a file object keeps np.savez from appending ".npz"
        np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    return path


def load_judge(path: str) -> tuple[JudgeCNN, dict[str, Any]]:
    """(model, metadata) of a judge written by `save_judge` / `train_judge(out_path=...)`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The judge weights {path!r} do not exist; train them with train_judge.")
    try:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            arrays = {k: f[k] for k in f.files if k.startswith("param/")}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path!r} is not a judge weights file ({type(e).__name__}: {e}).") from e
    if meta.get("version") != JUDGE_FORMAT_VERSION:
        raise ValueError(f"{path!r} has judge format {meta.get('version')}, expected {JUDGE_FORMAT_VERSION}.")
    model = JudgeCNN(int(meta["num_classes"]), width=int(meta["width"]), feature_dim=int(meta["feature_dim"]),
                     image_size=int(meta["image_size"]), rngs=nnx.Rngs(0))
    new = []
    for k, v in _flat_params(model):
        arr = arrays.get(_key(k))
        if arr is None or arr.shape != v.get_value().shape:
            raise ValueError(f"{path!r} does not fit the judge architecture (parameter {_key(k)}).")
        new.append((k, v.replace(jnp.asarray(arr))))
    nnx.update(model, nnx.from_flat_state(new))
    return model, meta


def default_judge_path(data_config: Any) -> str:
    """Where the CLI caches a judge for a data config: next to the embedded dataset cache."""
    from rq_jax.data.pipeline import cache_dir, choose_embedded, resolve_config

    cfg = resolve_config(data_config)
    name = choose_embedded(cfg) if cfg.name == "embedded" else cfg.name
    if name in ("folder", "tfds"):
        src = os.path.abspath(str(cfg.folder)) if name == "folder" else str(cfg.tfds_name)
        name = f"{name}_{hashlib.sha1(src.encode()).hexdigest()[:8]}"  # a stable cache key per source
    if name == "emoji" and not cfg.get("skin_tones", True):
        name += "_no_skin_tones"  # another image set: another judge
    limit = f"_n{int(cfg.limit)}" if cfg.limit is not None else ""
    return os.path.join(cache_dir(cfg), f"judge_{name}_{int(cfg.image_size)}{limit}_v{int(cfg.val_every)}.npz")


# ---------------------------------------------------------------------------------------------------
# Judging samples
# ---------------------------------------------------------------------------------------------------
def read_samples(samples_path: str, requested_classes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, 3], requested class [N]) of a sample `.npz` (`images`, `cond`).

    `requested_classes` (one class id per grid row, rows of equal size) replaces `cond`.
    """
    if not os.path.isfile(samples_path):
        raise FileNotFoundError(f"The samples file {samples_path!r} does not exist; write one with "
                                "`python -m rq_jax.sample --workdir STAGE2 --classes ... --out s.png`.")
    try:
        with np.load(samples_path) as f:
            if "images" not in f.files:
                raise ValueError(f"{samples_path!r} has no 'images' array (arrays: {', '.join(f.files)}).")
            images = np.asarray(f["images"])
            cond = np.asarray(f["cond"]) if "cond" in f.files else np.zeros((0,), np.int32)
    except (OSError, EOFError) as e:
        raise ValueError(f"{samples_path!r} could not be read as an .npz archive ({e}).") from e
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or images.shape[0] < 2:
        raise ValueError(f"{samples_path!r}: 'images' must be uint8 [N >= 2, H, W, 3], got {images.dtype} "
                         f"{images.shape}.")
    if requested_classes:
        rows = len(requested_classes)
        if images.shape[0] % rows:
            raise ValueError(f"{samples_path!r} holds {images.shape[0]} images, which do not split into "
                             f"{rows} equal rows, one per requested class.")
        cond = np.repeat(np.asarray(requested_classes, np.int64), images.shape[0] // rows)
    if cond.shape != (images.shape[0],):
        raise ValueError(f"{samples_path!r}: 'cond' must hold one requested class per image ({images.shape[0]}), "
                         f"got shape {cond.shape}; unconditional samples cannot be judged for class accuracy.")
    return images, cond


def load_or_train_judge(data_config: Any, judge_path: str, *, train_steps: int, seed: int,
                        max_images: int | None) -> tuple[JudgeCNN, bool]:
    """(the judge at `judge_path`, whether it was trained now): trained and saved there first when missing."""
    if os.path.isfile(judge_path):
        return load_judge(judge_path)[0], False
    print(f"training a judge ({train_steps} steps) on the real data, cached at {judge_path}", file=sys.stderr,
          flush=True)
    train_judge(data_config, steps=train_steps, seed=seed, out_path=judge_path, max_images=max_images)
    return load_judge(judge_path)[0], True


def _per_class(cond: np.ndarray, hit: np.ndarray, names: list[str], val_recall: dict) -> dict[str, Any]:
    """Per requested class: how many samples, the fraction judged as it, the judge's recall on real images."""
    out = {}
    for c in np.unique(cond):
        sel = cond == c
        out[names[int(c)]] = {"class": int(c), "num": int(sel.sum()), "fraction_classified_as_requested":
                              float(hit[sel].mean()), "judge_recall_on_real_val": val_recall.get(c)}
    return out


def _demo_fids(f_train: np.ndarray, f_samples: np.ndarray, f_val: np.ndarray, seed: int) -> dict[str, float]:
    """Demo FID of the samples vs the training features, and the real-validation floor (also at the samples' N)."""
    from rq_jax.eval import fid as fid_lib

    out = {"demo_fid": fid_lib.frechet_distance_from_features(f_train, f_samples),
           "demo_fid_real_val": fid_lib.frechet_distance_from_features(f_train, f_val)}
    if f_samples.shape[0] < f_val.shape[0]:
        sub = np.random.default_rng(seed).choice(f_val.shape[0], f_samples.shape[0], replace=False)
        out["demo_fid_real_val_same_n"] = fid_lib.frechet_distance_from_features(f_train, f_val[sub])
    return out


def judge_samples(
    samples_path: str,
    data_config: Any,
    *,
    judge_path: str | None = None,
    train_steps: int = 1200,
    seed: int = 0,
    max_images: int | None = 50_000,
    requested_classes: list[int] | None = None,
) -> dict[str, Any]:
    """Conditional accuracy and demo FID of a sample `.npz` (`images` uint8 [N, H, W, 3], `cond` int [N]).

    `requested_classes` (one class id per grid row, rows of equal size) replaces `cond`: how text-conditional
    samples are judged, e.g. the rows of "red apple" and "police car" as food & drink and travel & places.

    The judge at `judge_path` (default: `default_judge_path`) is trained there first when missing. The
    FID floor, real validation vs training features, is given at the validation split's size and, when
    there are fewer samples, on a random validation subset of the samples' size (FID is biased upwards
    at small N, so compare the samples with that one).
    """
    from rq_jax.data.pipeline import resolve_config

    images, cond = read_samples(samples_path, requested_classes)
    cfg = resolve_config(data_config)
    judge_path = judge_path or default_judge_path(cfg)
    model, trained = load_or_train_judge(cfg, judge_path, train_steps=train_steps, seed=seed, max_images=max_images)
    x_train, _, info = load_split(cfg, "train", max_images=max_images)
    x_val, y_val, _ = load_split(cfg, "validation", max_images=max_images)
    if info.num_classes != model.num_classes:
        raise ValueError(f"The judge {judge_path!r} has {model.num_classes} classes but {info.description} has "
                         f"{info.num_classes}: give another --judge path.")
    if cond.min() < 0 or cond.max() >= model.num_classes:
        raise ValueError(f"{samples_path!r}: 'cond' holds classes outside [0, {model.num_classes}).")
    _, f_train = predict(model, x_train)
    val_logits, f_val = predict(model, x_val)
    logits, f_samples = predict(model, images)
    hit = np.argmax(logits, -1) == cond
    val_pred = np.argmax(val_logits, -1)
    val_recall = {c: float(np.mean(val_pred[y_val == c] == c)) for c in np.unique(y_val)}
    result: dict[str, Any] = {
        "samples": samples_path,
        "num_samples": int(images.shape[0]),
        "dataset": info.description,
        "num_classes": int(model.num_classes),
        "judge": judge_path,
        "judge_trained_now": trained,
        "judge_val_accuracy": float(np.mean(val_pred == y_val)),
        "judge_val_balanced_accuracy": float(np.mean(list(val_recall.values()))),
        "num_val": int(y_val.shape[0]),
        "conditional_accuracy": float(hit.mean()),
        "chance": 1.0 / model.num_classes,
        "per_class": _per_class(cond, hit, list(info.class_names), val_recall),
        "feature_extractor": FEATURE_DESCRIPTION,
        **_demo_fids(f_train, f_samples, f_val, seed),
    }
    result["note"] = ("demo FID: Fréchet distance of the judge's features of the samples vs the real training "
                      "images, only comparable with the real-validation floor at the same number of images "
                      "(demo_fid_real_val_same_n), not with Inception FIDs.")
    return result


def format_judge_report(result: dict[str, Any]) -> str:
    """The judge result as a few lines of text."""
    lines = [
        f"{result['num_samples']} samples of {result['samples']} judged on {result['dataset']}",
        f"  judge: {result['judge']} ({'trained now' if result['judge_trained_now'] else 'cached'}), validation "
        f"accuracy {result['judge_val_accuracy']:.3f} (class-balanced {result['judge_val_balanced_accuracy']:.3f}) "
        f"on {result['num_val']} real images",
        f"  classified as their requested class: {result['conditional_accuracy']:.3f} "
        f"(chance {result['chance']:.3f} = 1/{result['num_classes']})",
    ]
    for name, v in result["per_class"].items():
        recall = v["judge_recall_on_real_val"]
        lines.append(f"    class {v['class']:>3} {name[:24]:<24} {v['fraction_classified_as_requested']:.3f} of "
                     f"{v['num']:<5} (real validation images: {'-' if recall is None else f'{recall:.3f}'})")
    lines.append(f"  demo FID ({result['feature_extractor']}): samples vs train {result['demo_fid']:.3f}")
    floor = f"  floor, real validation vs train: {result['demo_fid_real_val']:.3f} ({result['num_val']} images)"
    if "demo_fid_real_val_same_n" in result:
        floor += f", {result['demo_fid_real_val_same_n']:.3f} ({result['num_samples']} images)"
    lines.append(floor)
    return "\n".join(lines)

