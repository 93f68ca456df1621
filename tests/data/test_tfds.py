"""tfds array_record datasets through grain, without TensorFlow: a tiny dataset built here.

tfds can build an array_record dataset with an Image feature without TensorFlow when the images are
given already encoded (file objects of PNG bytes), so no TF is needed to make the test data either.
"""

import io

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from rq_jax.data import build_image_pipeline  # noqa: E402

HOST = {"process_index": 0, "process_count": 1}
N_TRAIN, N_TEST = 12, 4


def _png(value: int, shape=(20, 30)) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(np.full((*shape, 3), value, np.uint8)).save(buf, format="PNG")
    buf.seek(0)
    return buf


class RqJaxTinyImages(tfds.core.GeneratorBasedBuilder):
    """12 train / 4 test solid grey images, two classes; train example 5 is not an image."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=["even", "odd"]),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(N_TRAIN, 0), "test": self._generate_examples(N_TEST, 100)}

    def _generate_examples(self, n, offset):
        for i in range(n):
            image = io.BytesIO(b"corrupt bytes") if offset == 0 and i == 5 else _png(10 * i + offset)
            yield i, {"image": image, "label": i % 2}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    RqJaxTinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_reads_by_name_and_by_directory(tfds_dir):
    by_name = {"name": "tfds", "tfds_name": "rq_jax_tiny_images", "data_dir": tfds_dir, "image_size": 8}
    by_dir = {"name": "tfds", "tfds_name": f"{tfds_dir}/rq_jax_tiny_images", "image_size": 8}
    for config in (by_name, by_dir):
        it, info = build_image_pipeline(
            config, split="train", batch_size=4, seed=0, repeat=False, drop_remainder=False, **HOST
        )
        batches = list(it)
        assert info.dataset == "tfds" and info.class_names == ("even", "odd") and info.num_examples == N_TRAIN
        assert sum(len(b["label"]) for b in batches) == N_TRAIN - 1  # the corrupt record is skipped
        assert info.skipped.count == 1
        assert next(iter(info.skipped.skipped)).startswith("tfds rq_jax_tiny_images[train]#")
        image = np.concatenate([b["image"] for b in batches])
        assert image.shape[1:] == (8, 8, 3) and image.dtype == np.float32
        # Example i is solid grey 10*i (mapped to 10*i/127.5 - 1) with label i % 2 (tfds stores them
        # in its own shuffled order, so the record index is not i).
        grey = np.round((image[:, 0, 0, 0] + 1) * 127.5).astype(int)
        assert np.all(image.std(axis=(1, 2, 3)) < 1e-6) and sorted(grey // 10) == [i for i in range(12) if i != 5]
        np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), (grey // 10) % 2)


def test_eval_split_mapping_and_hosts(tfds_dir):
    config = {
        "name": "tfds",
        "tfds_name": "rq_jax_tiny_images",
        "data_dir": tfds_dir,
        "image_size": 8,
        "tfds_eval_split": "test",
    }
    seen = []
    for host in range(2):
        it, info = build_image_pipeline(config, split="validation", batch_size=2, process_index=host, process_count=2)
        seen.append(np.concatenate([b["index"] for b in it]).tolist())
    assert sorted(seen[0] + seen[1]) == list(range(N_TEST)) and set(seen[0]).isdisjoint(seen[1])


def test_missing_dataset_is_one_clear_error(tmp_path):
    config = {"name": "tfds", "tfds_name": "imagenet2012", "data_dir": str(tmp_path), "image_size": 8}
    with pytest.raises(FileNotFoundError) as e:
        build_image_pipeline(config, split="train", batch_size=2, **HOST)
    message = str(e.value)
    assert "'imagenet2012'" in message and str(tmp_path) in message
    assert "tfds build imagenet2012" in message and "--file_format array_record" in message
    assert "\n" not in message
    unregistered = dict(config, tfds_name="no_such_dataset_xyz")
    with pytest.raises(FileNotFoundError, match="'no_such_dataset_xyz' not found"):
        build_image_pipeline(unregistered, split="train", batch_size=2, **HOST)
    with pytest.raises(FileNotFoundError, match="has no dataset_info.json"):
        build_image_pipeline(dict(config, tfds_name=str(tmp_path / "x")), split="train", batch_size=2, **HOST)
