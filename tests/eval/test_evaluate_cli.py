"""`python -m rq_jax.evaluate`: SSIM against a scipy reference, and the recon / reconstruct / fid commands
on a tiny trained workdir (one training step of the demo's runlocal config)."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from scipy import ndimage

from rq_jax import evaluate
from rq_jax.eval import fid
from rq_jax.eval.image_sets import compute_fid
from rq_jax.eval.recon import ssim
from rq_jax.models.inception import random_inception_arrays, save_inception
from rq_jax.models.lpips import lpips_checkpoint_shapes, save_lpips
from tests.helpers import load_repo_config

REPO = pathlib.Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------------
def reference_ssim(x, y):
    """Wang et al.'s SSIM in float64 with scipy: Gaussian (sigma 1.5, 11 taps) local statistics, valid region."""
    x, y = (np.asarray(x, np.float64) + 1) / 2, (np.asarray(y, np.float64) + 1) / 2
    c1, c2 = 0.01**2, 0.03**2
    out = []
    for xi, yi in zip(x, y, strict=True):
        per_channel = []
        for c in range(xi.shape[-1]):
            a, b = xi[..., c], yi[..., c]
            g = lambda m: ndimage.gaussian_filter(m, 1.5, truncate=3.5)[5:-5, 5:-5]  # radius 5: an 11-tap window
            mu_a, mu_b = g(a), g(b)
            var_a, var_b, cov = g(a * a) - mu_a**2, g(b * b) - mu_b**2, g(a * b) - mu_a * mu_b
            s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            per_channel.append(s.mean())
        out.append(np.mean(per_channel))
    return np.array(out)


def test_ssim_matches_the_scipy_reference():
    r = np.random.default_rng(0)
    x = np.tanh(ndimage.gaussian_filter(r.normal(size=(3, 24, 20, 3)), (0, 2, 2, 0)) * 4)
    y = np.clip(x + r.normal(scale=[[[[0.05]]], [[[0.3]]], [[[1.0]]]], size=x.shape), -1, 1)
    want = reference_ssim(x, y)
    assert want[0] > want[1] > want[2]
    np.testing.assert_allclose(ssim(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)), want,
                               atol=2e-5)
    np.testing.assert_allclose(ssim(jnp.asarray(x), jnp.asarray(x)), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="at least"):
        ssim(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))


# ---------------------------------------------------------------------------------------------------
# Commands on a trained workdir
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A stage-1 run after one step of configs/rqvae/demo.py:runlocal on 160 digits (16 held out)."""
    from rq_jax.trainers.rqvae import train

    c = load_repo_config("configs/rqvae/demo.py", "runlocal")
    root = tmp_path_factory.mktemp("eval_run")
    c.data.data_dir = str(root / "data")
    c.data.limit = 160
    c.train.num_steps = 1
    train(c, str(root / "run"))
    return str(root / "run")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random-valued LPIPS and Inception checkpoints in the converted layouts."""
    folder = tmp_path_factory.mktemp("weights")
    r = np.random.default_rng(0)
    lp = {k: (r.uniform(0, 0.01, s) if k.startswith("lin") else r.normal(size=s) * 0.05).astype(np.float32)
          for k, s in lpips_checkpoint_shapes().items()}
    save_lpips(folder / "lpips.npz", lp)
    save_inception(folder / "inception.npz", random_inception_arrays(nnx.Rngs(0)))
    return str(folder / "lpips.npz"), str(folder / "inception.npz")


def test_recon_writes_every_metric(workdir, weights, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    evaluate.main(["recon", "--workdir", workdir, "--batch_size", "8", "--num_batches", "1",
                   "--lpips", weights[0], "--inception", weights[1], "--out", str(out)])
    result = json.loads(out.read_text())
    depth = 4
    assert result["step"] == 1 and result["num_images"] == 8
    for key in ("psnr", "ssim", "lpips", "rfid"):
        assert np.isfinite(result[key]), key
    for key in ("psnr_per_depth", "codebook_perplexity", "codebook_usage", "codebook_dead"):
        assert len(result[key]) == depth, key
    assert result["psnr_per_depth"][-1] == result["psnr"]
    assert all(0 < u <= 1 for u in result["codebook_usage"])
    assert all(1 <= p <= 8 * 16 for p in result["codebook_perplexity"])  # at most 8 images x 16 positions used
    table = capsys.readouterr().out
    assert "PSNR (dB)" in table and "rFID" in table and str(out) in table

    # the trainer's own evaluation at its last step ran on the same 8 held-out images (eval_batches=1 of 8)
    with open(os.path.join(workdir, "eval.json")) as f:
        trainer_eval = json.load(f)
    assert result["psnr"] == pytest.approx(trainer_eval["eval/psnr"], abs=1e-3)
    for d in range(depth):
        assert result["psnr_per_depth"][d] == pytest.approx(trainer_eval[f"eval/psnr_depth{d + 1}"], abs=1e-3)
        assert result["codebook_perplexity"][d] == pytest.approx(trainer_eval[f"eval/perplexity_d{d}"], rel=1e-5)


def test_reconstruct_writes_one_png_per_image_and_a_grid(workdir, tmp_path, capsys):
    out = tmp_path / "recons"
    evaluate.main(["reconstruct", "--workdir", workdir, "--num", "3", "--out", str(out)])
    assert sorted(os.listdir(out)) == ["grid.png", "recon_0000.png", "recon_0001.png", "recon_0002.png"]
    up, depth, pad, size = 4, 4, 2, 32  # 32-px images are upscaled x4; panels: input, recon, depth 1..4
    with Image.open(out / "recon_0000.png") as img:
        assert img.size == (((depth + 2) * (size + pad) + pad) * up, (size + 2 * pad) * up)
    with Image.open(out / "grid.png") as img:
        assert img.size == ((3 * (size + pad) + pad) * up, ((depth + 1) * (size + pad) + pad) * up)
    assert "wrote 3 reconstructions" in capsys.readouterr().out


def test_fid_between_image_sets_and_from_statistics(weights, tmp_path, capsys):
    r = np.random.default_rng(0)
    (tmp_path / "real").mkdir()  # a folder of images of two sizes, and a corrupt file
    for i in range(6):
        image = r.integers(0, 256, (40, 36 + 4 * (i % 2), 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "real" / f"{i}.png")
    (tmp_path / "real" / "6.png").write_text("not a png")
    # an .npz of uint8 images (ADM's reference-batch layout); at 299 px they share the real set's compiled shape
    np.savez(tmp_path / "fake.npz", arr_0=r.integers(0, 256, (4, 299, 299, 3), dtype=np.uint8))
    stats = tmp_path / "real_stats.npz"
    out = tmp_path / "fid.json"
    args = ["fid", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake.npz"), "--inception",
            weights[1], "--batch_size", "4", "--save_real_stats", str(stats), "--out", str(out)]
    for extra, message in (([], "holds 6 readable images (1 unreadable files skipped): FID from fewer than 2048"),
                           (["--allow_small"], "mixes image sizes (36x40: 3, 40x40: 3); FID compares images of one")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(args + extra)
        err = capsys.readouterr().err
        assert e.value.code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    evaluate.main(args + ["--allow_small", "--resize"])
    assert "skipped 1 unreadable real images" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["num_real"] == 6 and result["num_fake"] == 4 and result["num_real_unreadable"] == 1
    assert result["fid"] > 0 and result["inception_score"] >= 1.0 and result["inception_score_splits"] == 2
    mu, sigma = fid.load_statistics(stats)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    # statistics files on both sides (small made-up ones: a 2048-d sqrtm takes a minute on 2 cores)
    rs = np.random.default_rng(1)
    f1, f2 = rs.normal(size=(30, 8)), rs.normal(size=(40, 8)) + 0.5
    fid.save_statistics(tmp_path / "a.npz", *fid.activation_statistics(f1))
    fid.save_statistics(tmp_path / "b.npz", *fid.activation_statistics(f2))
    result = compute_fid(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), weights[1])  # statistics: no size check
    assert result["fid"] == pytest.approx(fid.frechet_distance_from_features(f1, f2), rel=1e-9)
    assert "inception_score" not in result


def test_clear_errors(workdir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["recon", "--workdir", workdir, "--lpips", str(tmp_path / "vgg.npz")])
    assert e.value.code == 1
    assert "python -m rq_jax.convert lpips" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        evaluate.main(["fid", "--real", str(tmp_path / "empty"), "--fake", str(tmp_path / "empty"),
                       "--inception", str(tmp_path / "inception.npz")])
    assert "python -m rq_jax.convert inception" in capsys.readouterr().err
    # through the module entry point: one line on stderr, exit status 1
    proc = subprocess.run([sys.executable, "-m", "rq_jax.evaluate", "reconstruct", "--workdir",
                           str(tmp_path / "no_run"), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: The workdir '{tmp_path / 'no_run'}' does not exist; "
                                                "give the --workdir of a stage-1 run."]
    with pytest.raises(SystemExit):
        evaluate.main(["recon", "--workdir", str(tmp_path)])
    assert "config.json does not exist" in capsys.readouterr().err


def test_nan_metrics_are_an_error():
    assert evaluate.non_finite({"step": 3, "psnr": 21.0, "psnr_per_depth": [20.0, float("nan")], "name": "x",
                                "ssim": float("inf")}) == ["psnr_per_depth", "ssim"]
    assert evaluate.non_finite({"psnr": 21.0, "usage": [1, 2]}) == []
