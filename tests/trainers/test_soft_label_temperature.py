"""Stage 2 soft-label temperature: 'auto:<bits>' is solved at start-up, written to config.json, kept on resume;
near-uniform targets raise a warning; the step logs per-depth target entropy."""

import json
import pathlib

import numpy as np
import pytest

from rq_jax.data.feature_format import write_feature_dir
from rq_jax.data.features import FeatureSource
from rq_jax.trainers import rq_transformer as t2
from rq_jax.trainers import soft_labels
from tests.helpers import load_repo_config as load_config


def _features_dir(root: pathlib.Path, c, n: int = 16, scale: float = 0.05) -> pathlib.Path:
    """A feature directory as `rq_jax.extract` writes it, with residuals of a known (small) scale."""
    (h, w, _), k, n_z = c.model.code_shape, c.model.vocab_size, c.model.embed_dim
    rng = np.random.default_rng(0)
    codebook = (rng.normal(size=(k, n_z)) * scale).astype(np.float32)
    out = root / "features"
    splits = {split: dict(features=(rng.normal(size=(n, h, w, n_z)) * scale).astype(np.float16),
                          label=(np.arange(n) % 3).astype(np.int32), caption=np.full((n,), -1, np.int32),
                          flipped=np.zeros((n,), bool), source_index=np.arange(n))
              for split in ("train", "validation")}
    meta = dict(rqvae_workdir="", rqvae_step=0, code_shape=list(c.model.code_shape), codebook_size=int(k),
                embed_dim=int(n_z), image_size=32, num_classes=3, class_names=["a", "b", "c"], flips=False,
                dataset="synthetic")
    write_feature_dir(str(out), meta, codebook, splits, records_per_shard=5)
    return out


def _config(root, temperature, steps=2):
    c = load_config("configs/transformer/demo.py", "runlocal")
    c.data.features_dir = str(_features_dir(root, c))
    c.rqvae_workdir = ""
    c.soft.temperature = temperature
    c.train.update(dict(num_steps=steps, eval_every=steps, sample_every=10**6, checkpoint_every=2))
    return c


def test_auto_temperature_round_trips_through_config_json_and_resume(tmp_path, monkeypatch, capsys):
    work = tmp_path / "run"
    t2.train(_config(tmp_path, "auto:1.0"), str(work))
    saved = json.loads((work / "config.json").read_text())["soft"]
    assert saved["temperature_spec"] == "auto:1.0" and len(saved["temperature"]) == 4
    taus = saved["temperature"]
    record = json.loads((work / "soft_labels.json").read_text())
    np.testing.assert_allclose(record["entropy_bits"], 1.0, atol=0.05)
    assert record["temperature"] == taus and "calibrated on" in record["source"]
    out = capsys.readouterr().out
    assert "soft labels: tau" in out and "target H " in out  # start-up report and per-depth entropy in the log

    # resuming with the same command must not recalibrate: it takes the numbers from config.json
    def fail(*a, **k):
        raise AssertionError("recalibrated on resume")

    monkeypatch.setattr(soft_labels, "calibrate_temperature", fail)
    t2.train(_config(tmp_path, "auto:1.0", steps=4), str(work))
    again = json.loads((work / "config.json").read_text())["soft"]
    assert again["temperature"] == taus and again["temperature_spec"] == "auto:1.0"
    assert "as calibrated when this run started" in json.loads((work / "soft_labels.json").read_text())["source"]


def test_per_depth_numbers_are_used_as_given(tmp_path):
    c = _config(tmp_path, (0.01, 0.005, 0.002, 0.001))
    taus, how = soft_labels.resolve_temperature(c, np.zeros((2, 8, 8, 32), np.float16),
                                                np.zeros((64, 32), np.float32), str(tmp_path))
    assert taus == (0.01, 0.005, 0.002, 0.001) and how == "as configured"
    c.soft.temperature = 0.5
    assert soft_labels.resolve_temperature(c, None, None, str(tmp_path))[0] == (0.5,) * 4


def test_near_uniform_targets_warn(tmp_path):
    c = _config(tmp_path, 0.5)  # residuals of scale 0.05: tau 0.5 makes Q_tau nearly uniform
    src = FeatureSource(c.data.features_dir, "train")
    with pytest.warns(soft_labels.SoftLabelWarning, match=r"close to uniform at depth 1, 2, 3, 4"):
        record = soft_labels.report_soft_labels(c, (0.5,) * 4, "as configured", src.sample_vectors(4096),
                                                src.codebook, str(tmp_path))
    assert min(record["entropy_bits"]) > 0.5 * np.log2(64)


def test_target_statistics_of_the_fused_loss():
    """Uniform soft labels (four codes equidistant from the residual) have 2 bits and p_max 1/4; one-hot, 0 and 1."""
    import jax.numpy as jnp

    codebook = jnp.asarray([[1.0, 0], [-1, 0], [0, 1], [0, -1]], jnp.float32)
    residuals = jnp.zeros((2, 1, 1, 2, 2), jnp.float32)
    codes = jnp.zeros((2, 1, 1, 2), jnp.int32)
    logits = jnp.zeros((2, 1, 1, 2, 4), jnp.float32)
    soft = soft_labels.cross_entropy(logits, soft_labels.Targets(codes, residuals, jnp.asarray([2.0, 2.0])), codebook)
    np.testing.assert_allclose(np.asarray(soft.target_entropy) / np.log(2), 2.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(soft.target_p_max), 0.25, atol=1e-6)
    np.testing.assert_allclose(np.asarray(soft.loss), np.log(4), atol=1e-6)
    hard = soft_labels.cross_entropy(logits, soft_labels.Targets(codes, residuals, None), codebook)
    np.testing.assert_allclose(np.asarray(hard.target_entropy), 0.0)
    np.testing.assert_allclose(np.asarray(hard.target_p_max), 1.0)
