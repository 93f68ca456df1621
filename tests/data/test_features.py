"""The stage-2 feature format: ArrayRecord shards read lazily by index, per-process ranges, the old `.npz`
format's one-sentence error and its rewrite, and host memory that does not grow with the dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rq_jax.data import feature_format as fmt
from rq_jax.data.features import FeatureSource, LegacyFeaturesError, build_feature_pipeline, load_meta, process_range
from rq_jax.data.legacy_features import rewrite_npz_dir

META = dict(code_shape=[2, 3, 4], codebook_size=8, embed_dim=5, num_classes=3, class_names=["a", "b", "c"],
            dataset="synthetic", flips=True)


def _arrays(n: int, seed: int = 0, shape=(2, 3, 5)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return dict(features=rng.normal(size=(n, *shape)).astype(np.float16), label=(np.arange(n) % 3).astype(np.int32),
                caption=np.arange(n, dtype=np.int32) - 1, flipped=np.arange(n) % 2 == 1,
                source_index=np.arange(n, dtype=np.int64) // 2)


def test_records_round_trip_through_shards(tmp_path):
    arrays, codebook = _arrays(23), np.arange(40, dtype=np.float32).reshape(8, 5)
    meta = fmt.write_feature_dir(str(tmp_path), META, codebook, {"train": arrays}, records_per_shard=5)
    assert [s["num_records"] for s in meta["splits"]["train"]["shards"]] == [5, 5, 5, 5, 3]
    assert meta["splits"]["train"]["num_records"] == 23 and load_meta(str(tmp_path))["format"] == fmt.FORMAT
    assert sorted(p.name for p in (tmp_path / "train").iterdir())[0] == "train-00000-of-00005.array_record"
    src = FeatureSource(str(tmp_path), "train")
    assert len(src) == 23
    np.testing.assert_array_equal(src.codebook, codebook)
    got = src.read(np.arange(23)[::-1])
    for key, want in arrays.items():
        np.testing.assert_array_equal(got["features" if key == "features" else key], want[::-1])
    assert got["features"].dtype == np.float32
    one = src[7]
    assert set(one) == {"features", "label", "caption", "flipped", "source_index"}
    assert one["source_index"] == 3 and one["flipped"] and one["label"] == 1 and one["caption"] == 6
    with pytest.raises(IndexError):
        src[23]
    with pytest.raises(FileNotFoundError, match="has no 'validation' split"):
        FeatureSource(str(tmp_path), "validation")


def test_each_process_reads_its_own_contiguous_range(tmp_path):
    fmt.write_feature_dir(str(tmp_path), META, np.zeros((8, 5), np.float32), {"validation": _arrays(23)},
                          records_per_shard=4)
    seen = []
    for pi in range(3):
        it, _ = build_feature_pipeline(str(tmp_path), split="validation", batch_size=4, process_index=pi,
                                       process_count=3)
        got = np.concatenate([b["caption"] + 1 for b in it])  # caption + 1 is the record index here
        start, stop = process_range(23, pi, 3)
        np.testing.assert_array_equal(got, np.arange(start, stop))
        seen.append(got)
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(23))


def test_training_iterator_shuffles_repeats_and_restores(tmp_path):
    fmt.write_feature_dir(str(tmp_path), META, np.zeros((8, 5), np.float32), {"train": _arrays(20)},
                          records_per_shard=6)
    it, _ = build_feature_pipeline(str(tmp_path), split="train", batch_size=5, seed=3, process_index=1,
                                   process_count=2)
    epoch = np.concatenate([next(it)["caption"] + 1 for _ in range(2)])
    assert sorted(epoch) == list(range(10, 20)) and list(epoch) != sorted(epoch)
    state = it.get_state()
    after = [next(it)["features"] for _ in range(3)]
    it.set_state(state)
    for want in after:
        np.testing.assert_array_equal(next(it)["features"], want)


def _legacy_dir(tmp_path, parts: int):
    """A directory as the old extractor wrote it: `<split>.npz` (or one file per process) and meta.json."""
    d = tmp_path / "old"
    d.mkdir()
    arrays = _arrays(12, seed=1)
    codebook = np.ones((8, 5), np.float32)
    for i in range(parts):
        sl = slice(i * 12 // parts, (i + 1) * 12 // parts)
        name = "train.npz" if parts == 1 else f"train.{i}-of-{parts}.npz"
        np.savez(d / name, codebook=codebook, features=arrays["features"][sl], labels=arrays["label"][sl],
                 captions=arrays["caption"][sl], flipped=arrays["flipped"][sl])
    (d / "meta.json").write_text(json.dumps(dict(META, rqvae_workdir="", rqvae_step=0, q_tau=None)))
    return d, arrays


@pytest.mark.parametrize("parts", [1, 2])
def test_old_npz_format_gets_one_sentence_then_rewrites(tmp_path, parts):
    d, arrays = _legacy_dir(tmp_path, parts)
    with pytest.raises(LegacyFeaturesError) as e:
        FeatureSource(str(d), "train")
    message = str(e.value)
    assert "\n" not in message and f"python -m rq_jax.extract --rewrite {d}" in message
    assert load_meta(str(d), require_shards=False)["class_names"] == META["class_names"]  # what `sample` reads
    meta = rewrite_npz_dir(str(d), records_per_shard=5)
    assert meta["splits"]["train"]["num_records"] == 12 and len(meta["splits"]["train"]["shards"]) == 3
    got = FeatureSource(str(d), "train").read(np.arange(12))
    np.testing.assert_array_equal(got["features"], arrays["features"].astype(np.float32))
    np.testing.assert_array_equal(got["label"], arrays["label"])
    np.testing.assert_array_equal(got["flipped"], arrays["flipped"])
    assert (got["source_index"] == -1).all() and len(list(d.glob("*.npz"))) == parts  # unknown; npz kept


def test_rewrite_command_line(tmp_path):
    d, _ = _legacy_dir(tmp_path, 1)
    out = subprocess.run([sys.executable, "-m", "rq_jax.extract", "--rewrite", str(d)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and "rewrote" in out.stdout, out.stderr
    assert len(FeatureSource(str(d), "train")) == 12
    bad = subprocess.run([sys.executable, "-m", "rq_jax.extract", "--rewrite", str(tmp_path / "none")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "has no .npz features" in bad.stderr


# VmHWM, not ru_maxrss: after fork + exec, ru_maxrss still counts the forking parent's resident memory.
READ_RSS = """
import sys
from rq_jax.data.features import build_feature_pipeline
it, src = build_feature_pipeline(sys.argv[1], split="train", batch_size=64, process_index=0, process_count=1)
n = sum(len(next(it)["label"]) for _ in range(2 * len(src) // 64))  # two epochs, shuffled
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
print(n, int(hwm) // 1024)
"""


def _write_large(path, n: int) -> None:
    """n records of ImageNet's size (8x8x256 float16, 32 KiB), written in chunks."""
    meta = dict(META, code_shape=[8, 8, 4], embed_dim=256)
    splits, chunk = [], 2000
    for k in range(-(-n // chunk)):
        a = _arrays(min(chunk, n - k * chunk), seed=k, shape=(8, 8, 256))
        splits.append(fmt.write_split(str(path), f"part{k}", a, records_per_shard=1000))
    shards = [s for part in splits for s in part["shards"]]
    fmt.write_feature_dir(str(path), meta, np.zeros((8, 256), np.float32), {})
    meta = json.loads((path / "meta.json").read_text())
    meta["splits"]["train"] = dict(num_records=n, num_images=n, flips=True, shards=shards)
    fmt.write_json_atomic(str(path / "meta.json"), meta)


@pytest.mark.slow
def test_reading_memory_does_not_grow_with_the_dataset(tmp_path):
    """Peak RSS reading 8,000 records (256 MiB) twice exceeds that of 2,000 (64 MiB) by < 48 MiB (the old reader
    loaded the whole array: +192 MiB). Batches of 64 (4 MiB of float32): what is read ahead varies little."""
    peaks = {}
    for n in (2000, 8000):
        _write_large(tmp_path / str(n), n)
        out = subprocess.run([sys.executable, "-c", READ_RSS, str(tmp_path / str(n))], capture_output=True,
                             text=True, check=True, env=dict(os.environ, MALLOC_ARENA_MAX="2"))
        read, peaks[n] = map(int, out.stdout.split())
        assert read == 2 * n // 64 * 64
    assert peaks[8000] - peaks[2000] < 48, peaks


def test_sample_vectors_is_a_bounded_subset_of_the_records(tmp_path):
    arrays = _arrays(30)
    fmt.write_feature_dir(str(tmp_path), META, np.zeros((8, 5), np.float32), {"train": arrays}, records_per_shard=7)
    src = FeatureSource(str(tmp_path), "train")
    every = arrays["features"].astype(np.float32).reshape(-1, 5)
    np.testing.assert_array_equal(src.sample_vectors(10**6, chunk=4), every)  # all of them, in order
    some = src.sample_vectors(50, max_records=12, seed=1, chunk=5)
    assert some.shape == (50, 5) and len({tuple(v) for v in some}) == 50
    assert {tuple(v) for v in some} <= {tuple(v) for v in every}
    np.testing.assert_array_equal(some, src.sample_vectors(50, max_records=12, seed=1, chunk=3))  # chunk-free
