"""Every stage-2 config (one per row of Table 5) builds with the paper's numbers and the released sizes."""

from __future__ import annotations

import math
import pathlib

import jax
import ml_collections
import pytest
from flax import nnx

from rq_jax.config_lib import check_known_keys, rqvae_config, transformer_config
from rq_jax.models.rq_transformer import RQTransformer, validate_rq_transformer_config
from tests.helpers import load_repo_config

REPO = pathlib.Path(__file__).resolve().parents[2]

# Table 5 of the paper: (N_spatial, N_depth, n_e, heads, K, tau, params in millions). FFHQ: 355M with K = 2048
# (Table 5 prints 370M, the LSUN-church size with K = 16384); CC-3M: 26 spatial layers, as released.
PAPER = {
    "lsun_cat": (26, 4, 1280, 20, 16384, 0.5, 612),
    "lsun_bedroom": (26, 4, 1280, 20, 16384, 0.5, 612),
    "lsun_church": (24, 4, 1024, 16, 16384, 0.5, 370),
    "ffhq": (24, 4, 1024, 16, 2048, 1.0, 355),
    "imagenet_480m": (12, 4, 1536, 24, 16384, 0.5, 480),
    "imagenet_821m": (24, 4, 1536, 24, 16384, 0.5, 821),
    "imagenet_1400m": (42, 6, 1536, 24, 16384, 0.5, 1388),
    "imagenet_3800m": (42, 6, 2560, 40, 16384, 0.5, 3822),
    "cc3m": (26, 4, 1280, 20, 16384, 0.5, 654),
}
TABLE5_FILES = sorted(PAPER)
SAMPLING = {"lsun_cat": (512, 0.9), "lsun_bedroom": (8192, 0.85), "lsun_church": (1400, 1.0), "ffhq": (2048, 0.95),
            "cc3m": (1024, 0.9)}


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    return load_repo_config(f"configs/transformer/{name}.py", arg)


def count_params(model_cfg: ml_collections.ConfigDict) -> int:
    """Parameters of `RQTransformer(model_cfg)`, counted from the config (checked against eval_shape below)."""
    c, nz, k = int(model_cfg.d_model), int(model_cfg.embed_dim), int(model_cfg.vocab_size)
    h, w, d = model_cfg.code_shape
    r = int(model_cfg.mlp_ratio)
    cond_rows = {"none": 1, "class": model_cfg.num_classes, "text": model_cfg.text_vocab_size}[model_cfg.cond]
    cond_len = model_cfg.text_len if model_cfg.cond == "text" else 1
    block = 4 * (c * c + c) + 2 * 2 * c + (c * r * c + r * c) + (r * c * c + c)
    classifier = 2 * c + c * k + k
    n = (cond_rows + int(model_cfg.cfg_null)) * c + (cond_len + h * w + d) * c + 2 * (nz * c + c)
    n += (model_cfg.spatial_layers + model_cfg.depth_layers) * block + classifier
    if model_cfg.cond == "text":
        n += 2 * c + c * cond_rows + cond_rows
    return int(n)


def eval_shape_params(model_cfg: ml_collections.ConfigDict) -> int:
    model = nnx.eval_shape(lambda: RQTransformer(model_cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_one_file_per_table5_row():
    files = {p.stem for p in (REPO / "configs" / "transformer").glob("*.py")}
    assert set(PAPER) <= files


@pytest.mark.parametrize("name", TABLE5_FILES)
def test_full_config_matches_table5(name):
    c = load(name)
    check_known_keys(c, transformer_config(rqvae_config()))
    validate_rq_transformer_config(c.model)
    spatial, depth, n_e, heads, k, tau, _ = PAPER[name]
    m = c.model
    assert (m.spatial_layers, m.depth_layers, m.d_model, m.num_heads) == (spatial, depth, n_e, heads)
    assert m.vocab_size == k == c.rqvae.model.codebook_size
    assert tuple(m.code_shape) == (8, 8, 4) == tuple(c.rqvae.model.code_shape)
    assert m.embed_dim == 256 == c.rqvae.model.embed_dim
    assert c.soft.temperature == tau and c.soft.soft_labels and c.soft.stochastic_codes
    # Training recipe (App. A).
    t = c.train
    assert (t.b1, t.b2, t.lr, t.weight_decay) == (0.9, 0.95, 5e-4, 1e-4)
    assert t.batch_size == (16 if name == "ffhq" else 2048)
    assert m.dropout == (0.3 if name == "imagenet_3800m" else 0.1)
    assert (t.early_stop_patience > 0) == (name == "ffhq")
    # Conditioning and sampling defaults.
    cond = "class" if name.startswith("imagenet") else "text" if name == "cc3m" else "none"
    assert m.cond == cond
    if cond == "class":
        assert m.num_classes == 1000
    if cond == "text":
        assert (m.text_len, m.text_vocab_size) == (32, 16384)
    assert (c.sample.top_k, c.sample.top_p) == SAMPLING.get(name, (512, 0.95))
    assert c.rqvae_workdir.startswith("./workdirs/rqvae_")
    if cond == "text":
        assert c.text.vocab_size <= m.text_vocab_size


@pytest.mark.parametrize("name", ["lsun_church", "imagenet_821m"])
def test_derived_fields_follow_stage1(name):
    c = load(name)
    c.rqvae.model.codebook_size = 1024
    c.rqvae.model.code_shape = (16, 16, 2)
    c.rqvae.model.embed_dim = 64
    assert c.model.vocab_size == 1024 and tuple(c.model.code_shape) == (16, 16, 2) and c.model.embed_dim == 64


def test_imagenet_50ep_uses_the_50_epoch_rqvae():
    c = load("imagenet_1400m", "50ep")
    assert c.rqvae.train.num_epochs == 50 and c.rqvae_workdir.endswith("_50ep")


@pytest.mark.parametrize("name", TABLE5_FILES)
def test_parameter_count_matches_table5(name):
    c = load(name)
    want = PAPER[name][-1] * 1e6
    assert abs(count_params(c.model) - want) / want < 0.03, (name, count_params(c.model))


@pytest.mark.parametrize("name", ["ffhq", "imagenet_480m", "cc3m"])
def test_param_formula_equals_eval_shape(name):
    """The formula above is exact for the smallest models of each conditioning (so it holds for all)."""
    c = load(name)
    assert count_params(c.model) == eval_shape_params(c.model)


@pytest.mark.parametrize("name", TABLE5_FILES)
def test_runlocal_builds_a_model(name):
    c = load(name, "runlocal")
    check_known_keys(c, transformer_config(rqvae_config()))
    assert c.train.batch_size <= 8 and c.train.num_steps > 0 and c.model.d_model <= 64
    assert c.model.vocab_size == c.rqvae.model.codebook_size == 64
    assert tuple(c.model.code_shape) == tuple(c.rqvae.model.code_shape)
    assert eval_shape_params(c.model) == count_params(c.model) < 2_000_000
    if c.model.cond == "text":
        assert c.text.vocab_size <= c.model.text_vocab_size
