"""The sample judge (`rq_jax/eval/judge.py`, `python -m rq_jax.evaluate judge`) on a small digits set: it learns,
it scores real images with their true classes high and noise with random classes near chance, and its
feature FID separates the two."""

import json
import time

import numpy as np
import pytest

from rq_jax import evaluate
from rq_jax.data import to_uint8
from rq_jax.eval import judge

LIMIT = 400  # 360 training, 40 validation images (val_every 10)
STEPS = 300


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A digits data config .py, its data section, and a judge trained on it (with the training time)."""
    root = tmp_path_factory.mktemp("judge")
    config_py = root / "digits_config.py"
    config_py.write_text(
        "from rq_jax.config_lib import rqvae_config\n\n\n"
        "def get_config():\n"
        "    c = rqvae_config()\n"
        "    c.data.name = 'digits'\n"
        f"    c.data.data_dir = {str(root / 'data')!r}\n"
        "    c.data.image_size = 32\n"
        f"    c.data.limit = {LIMIT}\n"
        "    c.data.random_flip = False\n"
        "    return c\n"
    )
    data = judge.data_config_from_file(str(config_py))
    judge.load_split(data, "train")  # render the dataset outside the timed training
    t0 = time.perf_counter()
    model, acc = judge.train_judge(data, steps=STEPS, batch_size=64, seed=0, out_path=str(root / "judge.npz"))
    return dict(root=root, config_py=str(config_py), data=data, model=model, acc=acc,
                seconds=time.perf_counter() - t0, judge_path=str(root / "judge.npz"))


def test_judge_learns_digits_quickly_and_round_trips(digits):
    assert digits["acc"] > 0.6, digits["acc"]  # chance is 0.1
    assert digits["seconds"] < 120, digits["seconds"]  # ~20 s alone; the suite runs two tests at once
    loaded, meta = judge.load_judge(digits["judge_path"])
    assert meta["num_classes"] == 10 and meta["val_accuracy"] == pytest.approx(digits["acc"])
    x, _, _ = judge.load_split(digits["data"], "validation")
    np.testing.assert_allclose(judge.predict(loaded, x)[0], judge.predict(digits["model"], x)[0], atol=1e-5)
    assert judge.predict(loaded, x)[1].shape == (x.shape[0], 128)


def _judge_cli(digits, images, cond, name, capsys):
    samples = digits["root"] / f"{name}.npz"
    np.savez(samples, images=images, cond=cond, codes=np.zeros((len(images), 1), np.int32))
    out = digits["root"] / f"{name}.json"
    evaluate.main(["judge", "--samples", str(samples), "--data_config", digits["config_py"],
                   "--judge", digits["judge_path"], "--out", str(out)])
    printed = capsys.readouterr().out
    assert "classified as their requested class" in printed and "judge CNN penultimate 128-d" in printed
    return json.loads(out.read_text())


def test_judge_cli_separates_real_images_from_noise(digits, capsys):
    x_val, y_val, _ = judge.load_split(digits["data"], "validation")
    x_train, y_train, _ = judge.load_split(digits["data"], "train")
    # "samples": real held-out and training images (80) with their true classes as the requested ones
    real_images = to_uint8(np.concatenate([x_val, x_train[:40]]))
    real_cond = np.concatenate([y_val, y_train[:40]]).astype(np.int32)
    real = _judge_cli(digits, real_images, real_cond, "real", capsys)
    assert real["chance"] == pytest.approx(0.1) and real["num_classes"] == 10
    assert real["judge_val_accuracy"] == pytest.approx(digits["acc"])
    assert real["conditional_accuracy"] > 0.6
    assert real["feature_extractor"] == judge.FEATURE_DESCRIPTION
    assert sum(v["num"] for v in real["per_class"].values()) == len(real_cond)

    # the same images with their requested classes shifted by one: the accuracy must collapse
    shifted = _judge_cli(digits, real_images, (real_cond + 1) % 10, "shifted", capsys)
    assert shifted["conditional_accuracy"] < 0.3
    assert shifted["demo_fid"] == pytest.approx(real["demo_fid"])  # FID ignores the classes

    rng = np.random.default_rng(0)
    noise = _judge_cli(digits, rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, 200).astype(np.int32), "noise", capsys)
    assert noise["conditional_accuracy"] < 0.25  # chance 0.1 (binomial sd 0.02 at 200 samples)
    assert noise["demo_fid"] > 10 * real["demo_fid"], (noise["demo_fid"], real["demo_fid"])
    assert noise["demo_fid"] > 10 * real["demo_fid_real_val"]


def test_judge_cli_missing_samples_is_one_sentence(digits, capsys):
    missing = digits["root"] / "nope.npz"
    with pytest.raises(SystemExit) as e:
        evaluate.main(["judge", "--samples", str(missing), "--data_config", digits["config_py"]])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope.npz" in err and "does not exist" in err and "\n" not in err


def test_judge_cli_classes_per_row_judge_text_samples(digits, capsys):
    """Text samples carry token ids as `cond`: --classes gives one requested class per grid row instead."""
    x_val, y_val, _ = judge.load_split(digits["data"], "validation")
    rows = [np.flatnonzero(y_val == c)[:2] for c in (3, 7)]  # two rows ("digit three", "digit seven") of 2
    images = to_uint8(x_val[np.concatenate(rows)])
    samples = digits["root"] / "text.npz"
    np.savez(samples, images=images, cond=np.ones((4, 16), np.int32))  # token ids, as rq_jax.sample writes
    out = digits["root"] / "text.json"
    args = ["judge", "--samples", str(samples), "--data_config", digits["config_py"], "--judge", digits["judge_path"]]
    evaluate.main(args + ["--classes", "3,7", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [v["class"] for v in result["per_class"].values()] == [3, 7] and result["num_samples"] == 4
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate.main(args + ["--classes", "3,7,1"])  # 4 images do not split into 3 rows
    assert "do not split into 3 equal rows" in capsys.readouterr().err
