"""`python -m rq_jax.evaluate generate` on the tiny stage-2 run (tests/conftest.py's `tiny_stage2_runs`), sharded
over the 8 fake CPU devices; improved precision/recall and FID-to-statistics against brute-force references."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from rq_jax import evaluate, runs, sharding
from rq_jax.eval import fid, generate
from rq_jax.models.inception import random_inception_arrays, save_inception
from rq_jax.sampling import sample_codes


# ---------------------------------------------------------------------------------------------------
# Metrics (no model)
# ---------------------------------------------------------------------------------------------------
def brute_force_precision_recall(real, fake, k):
    """Kynkaenniemi et al.'s definition with full float64 distance matrices."""
    d = lambda a, b: np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    radii_real = np.sort(d(real, real), axis=1)[:, k]  # column 0: the vector itself
    radii_fake = np.sort(d(fake, fake), axis=1)[:, k]
    precision = np.mean(np.any(d(fake, real) <= radii_real[None, :], axis=1))
    recall = np.mean(np.any(d(real, fake) <= radii_fake[None, :], axis=1))
    return precision, recall


@pytest.mark.parametrize("n_real,n_fake,k,chunk", [(37, 23, 3, 8), (50, 64, 1, 16), (30, 30, 5, 10000)])
def test_precision_recall_matches_brute_force(n_real, n_fake, k, chunk):
    r = np.random.default_rng(n_real)
    real = r.normal(size=(n_real, 6)) + 100.0  # an offset like Inception's non-negative features
    fake = r.normal(size=(n_fake, 6)) * 1.3 + 100.4
    want = brute_force_precision_recall(real, fake, k)
    assert 0 < want[0] < 1 and 0 < want[1] < 1  # a non-trivial case
    got = fid.precision_recall(real, fake, k, chunk=chunk)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fid.knn_radii_sq(real - 100.0, k, chunk=chunk),
                               np.sort(np.sum((real[:, None] - real[None]) ** 2, -1), axis=1)[:, k], rtol=1e-4)


def test_precision_recall_of_a_set_against_itself_and_errors():
    f = np.random.default_rng(0).normal(size=(40, 16))
    assert fid.precision_recall(f, f, chunk=7) == (1.0, 1.0)
    far = f + 100.0
    assert fid.precision_recall(f, far) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than 3 vectors"):
        fid.precision_recall(f[:3], f)
    with pytest.raises(ValueError, match=r"\[N, F\] and \[M, F\]"):
        fid.precision_recall(f, f[:, :4])


@pytest.mark.parametrize("n", [12, 40])  # fewer, then more vectors than the 24 dimensions
def test_fid_to_statistics_equals_fid_between_features(n):
    r = np.random.default_rng(n)
    f1, f2 = r.normal(size=(30, 24)) @ r.normal(size=(24, 24)), r.normal(size=(n, 24)) + 0.3
    stats = fid.activation_statistics(f1)
    np.testing.assert_allclose(fid.frechet_distance_to_statistics(f2, *stats),
                               fid.frechet_distance_from_features(f1, f2), rtol=1e-6)


def test_balanced_classes():
    labels = generate.balanced_classes(23, 10)
    assert np.bincount(labels).tolist() == [3, 3, 3] + [2] * 7
    assert np.bincount(generate.balanced_classes(50000, 1000)).tolist() == [50] * 1000


def test_conditions_for_text_and_unconditional_models(tmp_path):
    import ml_collections

    from rq_jax.text import encode_texts, train_tokenizer

    tok = train_tokenizer(["red apple", "police car", "grinning face", "sun"], 40, str(tmp_path / "tokenizer.json"))
    (tmp_path / "prompts.txt").write_text("red apple\n\n  sun  \npolice car\n")
    prompts = generate.read_prompts(str(tmp_path / "prompts.txt"))
    assert prompts == ["red apple", "sun", "police car"]
    config = ml_collections.ConfigDict({"model": {"text_len": 4}})
    stub = lambda kind: runs.Stage2Run(type("M", (), {"cond_kind": kind})(), config, 0, None, "", {})
    cond, info = generate.conditions(stub("text"), 7, prompts=prompts, workdir=str(tmp_path))
    np.testing.assert_array_equal(cond, encode_texts(tok, prompts, 4)[np.arange(7) % 3])
    assert info == {"cond": "text", "num_prompts": 3}
    assert generate.conditions(stub("none"), 7) == (None, {"cond": "none"})
    with pytest.raises(ValueError, match="give --prompts FILE"):
        generate.conditions(stub("text"), 7, workdir=str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# The command on the tiny trained run
# ---------------------------------------------------------------------------------------------------
NUM, BATCH = 20, 6  # a batch of 6 becomes 8 on 8 devices; 20 = 2 full batches + one padded


@pytest.fixture(scope="module")
def inception_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("generate_weights") / "inception.npz"
    save_inception(path, random_inception_arrays(nnx.Rngs(0)))
    return str(path)


@pytest.fixture(scope="module")
def generated(tiny_stage2_runs, inception_path, tmp_path_factory):
    """Two `generate` runs with one seed: against reference images, then against their saved statistics."""
    root, _, _ = tiny_stage2_runs
    out = tmp_path_factory.mktemp("generate")
    ref = out / "ref.npz"
    np.savez(ref, arr_0=np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    common = ["generate", "--workdir", str(root / "transformer"), "--inception", inception_path, "--num", str(NUM),
              "--batch_size", str(BATCH), "--seed", "7", "--cfg_scale", "1.5"]
    evaluate.main([*common, "--ref", str(ref), "--precision_recall", "--save_ref_stats", str(out / "stats.npz"),
                   "--save_images", str(out / "images"), "--save_npz", str(out / "a.npz"),
                   "--out", str(out / "a.json")])
    evaluate.main([*common, "--ref", str(out / "stats.npz"), "--save_npz", str(out / "b.npz"),
                   "--out", str(out / "b.json")])
    return out, json.loads((out / "a.json").read_text()), json.loads((out / "b.json").read_text())


@pytest.mark.slow
def test_generate_reports_finite_metrics_sharded_and_balanced(tiny_stage2_runs, generated):
    root, _, _ = tiny_stage2_runs
    out, a, b = generated
    num_classes = json.loads((root / "features" / "meta.json").read_text())["num_classes"]
    for key in ("fid", "inception_score", "precision", "recall"):
        assert np.isfinite(a[key]), key
    assert a["fid"] > 0 and a["inception_score"] >= 1.0 and 0 <= a["precision"] <= 1 and 0 <= a["recall"] <= 1
    assert a["num_devices"] == len(jax.devices()) == 8 and a["batch_size"] == 8
    assert a["num_samples"] == NUM and a["num_ref"] == 12 and a["sampling"]["cfg_scale"] == 1.5
    assert a["cond"] == "class" and a["num_classes"] == num_classes
    assert a["class_counts"] == np.bincount(np.arange(NUM) % num_classes).tolist()
    samples = np.load(out / "a.npz")
    assert samples["arr_0"].shape == (NUM, 32, 32, 3) and samples["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(samples["arr_1"], np.arange(NUM) % num_classes)
    assert sorted(os.listdir(out / "images")) == [f"{i:06d}.png" for i in range(NUM)]


@pytest.mark.slow
def test_generate_is_deterministic_and_reads_statistics(generated):
    out, a, b = generated
    np.testing.assert_array_equal(np.load(out / "a.npz")["arr_0"], np.load(out / "b.npz")["arr_0"])
    assert "num_ref" not in b and "precision" not in b
    assert b["fid"] == pytest.approx(a["fid"], rel=1e-6)  # the saved statistics of the same reference
    assert b["inception_score"] == a["inception_score"]


@pytest.mark.slow
def test_sharded_sampler_equals_sampling_on_one_device(tiny_stage2_runs):
    """Device j of the sharded sampler gives exactly what `sample_codes` gives for its rows and key."""
    root, _, _ = tiny_stage2_runs
    run = runs.load_stage2(str(root / "transformer"))
    cfg = generate.sampling_config_for(run.config, top_k="8", cfg_scale=1.5)
    assert cfg.top_k == 8 and cfg.top_p == run.config.sample.top_p
    mesh = sharding.mesh_from_config({"data": -1})
    cond, info = generate.conditions(run, 8, num_classes=4)
    assert info["class_counts"] == [2, 2, 2, 2]
    keys = jax.random.split(jax.random.key(3), 8)
    bsh = sharding.batch_sharding(mesh)
    codes, images = generate.make_sampler(run, mesh, batch=8, cfg=cfg)(jax.device_put(cond, bsh),
                                                                          jax.device_put(keys, bsh))
    assert len(codes.sharding.device_set) == 8 and images.shape == (8, 32, 32, 3)
    codebook = run.decoder.codebook_state.embedding_KxC
    for j in (0, 5):
        want = sample_codes(run.model, codebook, cond[j : j + 1], keys[j], batch=1, cfg=cfg)
        np.testing.assert_array_equal(np.asarray(codes)[j : j + 1], np.asarray(want))


@pytest.mark.slow
def test_generate_errors(tiny_stage2_runs, inception_path, tmp_path, capsys):
    root, _, _ = tiny_stage2_runs
    fid.save_statistics(tmp_path / "stats.npz", np.zeros(4), np.eye(4))
    base = ["generate", "--workdir", str(root / "transformer"), "--inception", inception_path, "--num", "4"]
    for extra, message in [
        (["--ref", str(tmp_path / "stats.npz"), "--precision_recall"], "needs reference images"),
        (["--ref", str(tmp_path / "missing")], "neither an image folder nor an .npz"),
        (["--ref", str(tmp_path / "stats.npz"), "--prompts", str(tmp_path / "p.txt")], "prompts file"),
        (["--ref", str(tmp_path / "stats.npz"), "--num_classes", "11"], "out of range"),
    ]:
        with pytest.raises(SystemExit) as e:
            evaluate.main(base + extra)
        assert e.value.code == 1
        assert message in capsys.readouterr().err
