"""The grain pipeline on the embedded digits: batches, determinism, host sharding, checkpointed state."""

import json

import ml_collections
import numpy as np
import pytest
from data_helpers import DIGITS_LIMIT, needs_emoji_font

from rq_jax.data import DATASETS, build_image_pipeline, default_config, eval_batches, to_uint8

HOST = {"process_index": 0, "process_count": 1}


def take(it, n):
    return [next(it) for _ in range(n)]


def indices(batches):
    return np.concatenate([b["index"] for b in batches]).tolist()


def test_train_batches(digits_config):
    it, info = build_image_pipeline(digits_config, split="train", batch_size=8, seed=0, **HOST)
    batch = next(it)
    assert set(batch) == {"image", "label", "caption", "index"}
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() < 0.0 < batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)
    assert batch["caption"].dtype == np.int32 and np.all(batch["caption"] == batch["label"])
    assert info.captions[batch["caption"][0]] == f"digit {info.class_names[batch['label'][0]]}"
    assert info.dataset == info.embedded == "digits" and info.num_classes == 10
    assert info.num_examples == info.num_local_examples == DIGITS_LIMIT - DIGITS_LIMIT // 10
    assert info.steps_per_epoch == info.num_examples // 8
    # Repeats forever with full batches.
    for batch in take(it, 2 * info.steps_per_epoch):
        assert batch["image"].shape[0] == 8


def test_config_dict_and_defaults(digits_config):
    config = default_config()
    config.update(digits_config)
    assert isinstance(config, ml_collections.ConfigDict)
    it, info = build_image_pipeline(config, split="validation", batch_size=7, **HOST)
    batches = list(it)
    # Validation: read once, in order, the last partial batch kept.
    assert indices(batches) == list(range(info.num_examples)) and batches[-1]["image"].shape[0] == 2


def test_same_seed_same_batches_other_seed_other_order(digits_config):
    def first(seed):
        it, _ = build_image_pipeline(digits_config, split="train", batch_size=16, seed=seed, **HOST)
        return take(it, 3)

    a, b, c = first(1), first(1), first(2)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert indices(a) != indices(c)


def test_epochs_are_permutations_reshuffled(digits_config):
    it, info = build_image_pipeline(digits_config, split="train", batch_size=10, seed=3, **HOST)
    n = info.num_examples  # 270: 27 batches per epoch exactly
    epoch1, epoch2 = indices(take(it, n // 10)), indices(take(it, n // 10))
    assert sorted(epoch1) == sorted(epoch2) == list(range(n))
    assert epoch1 != epoch2


def test_augmentation_is_seeded_per_record(digits_config):
    config = dict(digits_config, min_crop_scale=0.5)
    a = take(build_image_pipeline(config, split="train", batch_size=32, seed=5, **HOST)[0], 2)
    b = take(build_image_pipeline(config, split="train", batch_size=32, seed=5, **HOST)[0], 2)
    np.testing.assert_array_equal(a[1]["image"], b[1]["image"])
    # The same digit appears augmented differently from its plain centre crop somewhere in the batch.
    plain = take(build_image_pipeline(config, split="train", batch_size=32, seed=5, augment=False, **HOST)[0], 2)
    assert indices(plain) == indices(a)
    assert not np.array_equal(plain[0]["image"], a[0]["image"])


def test_two_hosts_disjoint_and_covering(digits_config):
    seen = []
    for host in range(2):
        it, info = build_image_pipeline(
            digits_config, split="train", batch_size=8, seed=0, process_index=host, process_count=2,
            repeat=False, drop_remainder=False,
        )
        seen.append(indices(list(it)))
        assert info.num_local_examples == len(seen[-1])
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(info.num_examples))
    # Both hosts get the same number of full batches per epoch.
    assert info.steps_per_epoch == (info.num_examples // 2) // 8


def test_state_restore_continues_exactly(digits_config):
    it, _ = build_image_pipeline(digits_config, split="train", batch_size=12, seed=7, **HOST)
    take(it, 30)  # past the first epoch (22 batches), so the restore crosses an epoch boundary
    state = json.loads(json.dumps(it.get_state()))  # checkpointable as JSON
    expected = take(it, 5)
    fresh, _ = build_image_pipeline(digits_config, split="train", batch_size=12, seed=7, **HOST)
    fresh.set_state(state)
    for x, y in zip(expected, take(fresh, 5), strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_eval_batches_fixed_and_equal_across_hosts(digits_config):
    batches, info = eval_batches(digits_config, batch_size=4, num_batches=3, **HOST)
    again, _ = eval_batches(digits_config, batch_size=4, num_batches=3, **HOST)
    assert len(batches) == 3 and indices(batches) == list(range(12)) == indices(again)
    np.testing.assert_array_equal(batches[2]["image"], again[2]["image"])
    # 30 validation images on 2 hosts of 15: three full batches of 4 each, whatever was asked for.
    per_host = [
        eval_batches(digits_config, batch_size=4, process_index=h, process_count=2)[0] for h in range(2)
    ]
    assert [len(b) for b in per_host] == [3, 3]
    with pytest.raises(ValueError, match="too few for one batch"):
        eval_batches(digits_config, batch_size=64, **HOST)


def test_unknown_name_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError) as e:
        build_image_pipeline({"name": "imagenet"}, split="train", batch_size=2, **HOST)
    message = str(e.value)
    assert "'imagenet'" in message and all(f"'{d}'" in message for d in DATASETS)


def test_bad_host_arguments(digits_config):
    with pytest.raises(ValueError, match="process_index 2"):
        build_image_pipeline(digits_config, split="train", batch_size=2, process_index=2, process_count=2)


def test_to_uint8_inverts_the_scaling(digits_config):
    it, _ = build_image_pipeline(digits_config, split="validation", batch_size=5, **HOST)
    from rq_jax.data import load_embedded

    data = load_embedded("digits", cache_dir=digits_config["data_dir"], image_size=16, limit=DIGITS_LIMIT)
    batch = next(it)
    in_split = data.split_indices("validation", 10)[batch["index"]]
    np.testing.assert_array_equal(to_uint8(batch["image"]), data.images[in_split])


@needs_emoji_font
def test_emoji_pipeline(emoji_subset, cache_dir):
    config = {"name": "emoji", "data_dir": cache_dir, "image_size": 32, "limit": 60}
    it, info = build_image_pipeline(config, split="train", batch_size=6, seed=0, **HOST)
    batch = next(it)
    assert batch["image"].shape == (6, 32, 32, 3) and info.embedded == "emoji"
    assert info.num_classes == 9 and len(info.captions) == 60
    assert all(0 <= c < 60 for c in batch["caption"])


@needs_emoji_font
def test_emoji_without_skin_tones(emoji_subset, cache_dir):
    toned = sum(any(t in k for t in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")) for k in emoji_subset.keys)
    assert toned > 0
    config = {"name": "emoji", "data_dir": cache_dir, "image_size": 32, "limit": 60, "skin_tones": False}
    it, info = build_image_pipeline(config, split="validation", batch_size=4, **HOST)
    assert info.num_examples == len(range(0, 60 - toned, 10)) and len(info.captions) == 60
    assert len(emoji_subset.without_skin_tones()) == 60 - toned
