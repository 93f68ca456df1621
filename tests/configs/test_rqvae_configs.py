"""Every stage-1 config builds with the paper's numbers, and each runlocal variant trains a step."""

import glob
import json
import os
import pathlib

import pytest

from rq_jax.config_lib import check_known_keys, rqvae_config
from rq_jax.models.rqvae import validate_model_config
from tests.helpers import load_repo_config as load

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in glob.glob(str(REPO / "configs" / "rqvae" / "*.py")) if not p.endswith("__init__.py"))


def test_all_paper_settings_exist():
    names = {pathlib.Path(p).stem for p in CONFIGS}
    assert {"imagenet_8x8x4", "imagenet_8x8x2", "imagenet_8x8x8", "imagenet_16x16x1", "ffhq_8x8x4",
            "lsun_church", "lsun_cat", "lsun_bedroom", "demo"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: pathlib.Path(p).stem)
def test_full_config_builds(path):
    c = load(path)
    check_known_keys(c, rqvae_config())
    validate_model_config(c.model)
    name = pathlib.Path(path).stem
    if name.startswith("imagenet"):
        h, w, d = (int(s) for s in name.split("_")[1].split("x"))
        assert tuple(c.model.code_shape) == (h, w, d) and c.model.codebook_size == 16384
        assert c.model.resolution == 256 and c.train.batch_size == 128 and c.train.lr == 4e-5
        assert (c.train.b1, c.train.b2) == (0.5, 0.9) and c.loss.adv_weight == 0.75
        assert c.loss.perceptual_weight == 1.0 and c.train.num_epochs == 10
        assert load(path, "50ep").train.num_epochs == 50
    if name == "ffhq_8x8x4":
        assert c.model.codebook_size == 2048 and c.train.num_epochs == 150 and c.train.warmup_epochs == 5
    if name.startswith("lsun"):
        assert c.train.lr == 4e-6 and c.train.num_epochs == 1 and c.init_from


# Two configs train a real step end to end (data, compile, eval, checkpoint); the others share their code
# and differ only in numbers, so their train step is traced and lowered for the runlocal sizes (every config
# key read, every shape checked) without the 40 s XLA compilation each.
TRAINED = ("demo", "imagenet_8x8x4")


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if pathlib.Path(p).stem in TRAINED],
                         ids=lambda p: pathlib.Path(p).stem)
def test_runlocal_trains_one_step(path, tmp_path):
    from rq_jax.trainers.rqvae import train

    c = load(path, "runlocal")
    c.train.num_steps = 1
    c.data.data_dir = str(REPO / ".pytest_data")  # shared cache of the rendered digits
    if c.data.name in ("tfds", "folder"):
        c.data.name = "digits"  # the real datasets are not on a CI machine
    c.data.limit = 160
    scalars = train(c, str(tmp_path / "w"))
    assert scalars["eval/psnr"] > 0
    assert json.load(open(os.path.join(tmp_path, "w", "eval.json")))["step"] == 1


@pytest.mark.parametrize("path", [p for p in CONFIGS if pathlib.Path(p).stem not in TRAINED],
                         ids=lambda p: pathlib.Path(p).stem)
def test_runlocal_train_step_lowers(path):
    import jax
    import jax.numpy as jnp

    from rq_jax import sharding
    from rq_jax.trainers import rqvae as trainer

    c = load(path, "runlocal")
    check_known_keys(c, rqvae_config())
    mesh = sharding.mesh_from_run_config(c.mesh)
    trainer.check_batch_size(c.train.batch_size, mesh)
    tx_gen, _ = trainer.make_optimizer(c.train.lr, c.train, 1)
    tx_disc, _ = trainer.make_optimizer(c.train.disc_lr, c.train, 1)
    lpips_graph, lpips_state = trainer.load_perceptual(c)
    setup = trainer.setup_state(c, mesh, tx_gen, tx_disc)
    r = int(c.model.resolution)
    batch = {"image": jax.ShapeDtypeStruct((c.train.batch_size, r, r, 3), jnp.float32)}
    with jax.set_mesh(mesh):
        lowered = trainer.jit_train_step(c, mesh, setup, lpips_graph, lpips_state is not None).lower(
            setup.abstract, batch, None)
    assert "stablehlo" in lowered.as_text()[:100_000]
