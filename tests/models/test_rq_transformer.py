"""RQ-Transformer (stage 2): parity with the official PyTorch model, the KV-cached path, the official
state-dict mapping of every released config, causality, dropout and gradients."""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.convert.rq_transformer import (
    model_config_from_official,
    official_name,
    rq_transformer_params_from_official,
    rq_transformer_params_to_official,
    rq_transformer_state_from_official,
)
from rq_jax.models.rq_transformer import RQTransformer, logits_with_cache, rq_transformer_model_config

DATA = pathlib.Path(__file__).parents[1] / "golden"
RELEASED = sorted(
    p for p in (DATA / "official_state_dicts").glob("*.txt") if "rqtransformer" in p.name or "sqgan" in p.name
)
TOL = 1e-4


@nnx.jit(static_argnames=("train", "with_cond_logits"))
def _forward(model, codes, cond, codebook, rng=None, drop_cond=None, train=False, with_cond_logits=False):
    fn = model.forward_with_cond_logits if with_cond_logits else model
    return fn(codes, cond, codebook_KxC=codebook, train=train, rng=rng, drop_cond=drop_cond)


def _official_params(golden) -> dict[str, np.ndarray]:
    return {k[len("tf/param/"):]: v for k, v in golden.items() if k.startswith("tf/param/")}


def _abstract(cfg) -> RQTransformer:
    return nnx.eval_shape(lambda: RQTransformer(cfg, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def tiny(golden):
    """The golden tiny class-conditional model with the official parameters, and its codebook.

    Built abstractly and then filled (as a checkpoint converter would): no random init to compile.
    """
    sd = _official_params(golden)
    model = _abstract(model_config_from_official(sd, num_heads=4))
    assert rq_transformer_params_from_official(sd, model) == []
    codebook = jnp.asarray(golden["vae/param/quantizer.codebooks.0.weight"][:64])  # drop the padding row
    return model, codebook


def _randomize(model: nnx.Module, seed: int) -> None:
    """Random parameters (numpy, so nothing to compile) larger than the init's, so that parity tests are
    not trivially met by tiny logits."""
    rng = np.random.default_rng(seed)
    new = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape, dtype = var.get_value().shape, var.get_value().dtype
        noise = rng.normal(size=shape)
        if path[-1] == "scale":
            value = 1.0 + 0.1 * noise
        elif path[-1] == "kernel":
            value = noise / np.sqrt(shape[0])
        else:
            value = 0.3 * noise
        new.append((path, jnp.asarray(value, dtype)))
    nnx.update(model, nnx.from_flat_state(new))


def _small_model(cond: str, *, seed: int = 0, **kw) -> RQTransformer:
    cfg = rq_transformer_model_config(
        vocab_size=16, code_shape=(3, 4, 3), embed_dim=8, d_model=32, num_heads=4, spatial_layers=2,
        depth_layers=2, cond=cond, num_classes=5, text_vocab_size=11, text_len=4, **kw,
    )
    model = _abstract(cfg)
    _randomize(model, seed)
    return model


def _small_inputs(model: RQTransformer, seed: int = 0, batch: int = 2):
    rng = np.random.default_rng(seed)
    codes = jnp.asarray(rng.integers(0, model.vocab_size, (batch, *model.code_shape)), jnp.int32)
    codebook = jnp.asarray(rng.normal(size=(model.vocab_size, model.embed_dim)), jnp.float32)
    if model.cond_kind == "class":
        cond = jnp.asarray(rng.integers(0, 5, (batch,)), jnp.int32)
    elif model.cond_kind == "text":
        cond = jnp.asarray(rng.integers(0, 11, (batch, model.cond_len)), jnp.int32)
    else:
        cond = None
    return codes, cond, codebook


# ---- (a) parity with the official model -----------------------------------------------------------------
def test_full_forward_matches_official(tiny, golden):
    model, codebook = tiny
    logits = _forward(model, jnp.asarray(golden["tf/codes"]), jnp.asarray(golden["tf/cond"]), codebook)
    assert logits.shape == (2, 8, 8, 4, 64) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), golden["tf/logits"], atol=TOL, rtol=0)


def test_params_round_trip_to_official(tiny, golden):
    model, _ = tiny
    sd = _official_params(golden)
    back = rq_transformer_params_to_official(model)
    assert sorted(back) == sorted(sd)
    for name, value in sd.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_converter_errors_name_the_tensor(tiny, golden):
    model, _ = tiny
    sd = _official_params(golden)
    missing = {k: v for k, v in sd.items() if k != "head_transformer.blocks.0.attn.key.bias"}
    with pytest.raises(KeyError, match=r"head_transformer\.blocks\.0\.attn\.key\.bias"):
        rq_transformer_state_from_official(missing, model)
    wrong = dict(sd, **{"input_mlp.weight": np.zeros((64, 16), np.float32)})
    with pytest.raises(ValueError, match=r"input_mlp\.weight.*\(64, 16\)"):
        rq_transformer_state_from_official(wrong, model)
    _, unused = rq_transformer_state_from_official(dict(sd, extra=np.zeros(3)), model)
    assert unused == ["extra"]


# ---- (b) the KV-cached path ---------------------------------------------------------------------------
def test_cached_path_matches_official(tiny, golden):
    model, _ = tiny
    # the official K+1-row codebook (its last row is zero padding) works as well as the K-row one
    padded = jnp.asarray(golden["vae/param/quantizer.codebooks.0.weight"])
    logits = logits_with_cache(model, golden["tf/codes"], jnp.asarray(golden["tf/cond"]), padded)
    np.testing.assert_allclose(np.asarray(logits), golden["tf/logits_cached"], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(logits), golden["tf/logits"], atol=TOL, rtol=0)


@pytest.mark.parametrize("cond", ["none", "text", "class"])
def test_cached_path_matches_full_forward(cond):
    model = _small_model(cond, cfg_null=cond != "none")
    codes, c, codebook = _small_inputs(model)
    # with a null condition, row 0 drops its condition (classifier-free guidance) and row 1 keeps it
    drop = None if cond == "none" else jnp.array([True, False])
    full = _forward(model, codes, c, codebook, drop_cond=drop)
    assert float(jnp.std(full)) > 0.3  # not trivially small
    cached = logits_with_cache(model, codes, c, codebook, drop_cond=drop)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=TOL, rtol=0)
    if cond != "none":
        keep = _forward(model, codes, c, codebook, drop_cond=jnp.array([False, False]))
        np.testing.assert_array_equal(np.asarray(full[1]), np.asarray(keep[1]))
        assert not np.allclose(np.asarray(full[0]), np.asarray(keep[0]), atol=1e-3)
        mixed = c.at[0].set(model.null_cond(2)[0])
        by_index = _forward(model, codes, mixed, codebook, drop_cond=jnp.array([False, False]))
        np.testing.assert_array_equal(np.asarray(full[0]), np.asarray(by_index[0]))


def test_text_conditioning_layout():
    model = _small_model("text")
    codes, c, codebook = _small_inputs(model)
    logits, cond_logits = _forward(model, codes, c, codebook, with_cond_logits=True)
    assert logits.shape == (2, 3, 4, 3, 16) and cond_logits.shape == (2, 3, 11)
    assert model.spatial_len == 4 + 12 - 1
    # the paper's CC-3M layout: 32 text tokens + 8x8 codes -> 95 spatial tokens
    abstract = nnx.eval_shape(lambda: RQTransformer(rq_transformer_model_config(
        cond="text", text_len=32, d_model=64, num_heads=4, spatial_layers=1, depth_layers=1), rngs=nnx.Rngs(0)))
    assert abstract.spatial_len == 95
    # changing the last text token changes the first image position's logits; earlier tokens' cond logits don't
    c2 = c.at[:, -1].set((c[:, -1] + 1) % 11)
    logits2, cond_logits2 = _forward(model, codes, c2, codebook, with_cond_logits=True)
    assert not np.allclose(np.asarray(logits2[:, 0, 0, 0]), np.asarray(logits[:, 0, 0, 0]))
    np.testing.assert_array_equal(np.asarray(cond_logits2), np.asarray(cond_logits))


# ---- (c) every released official state dict maps onto the model ---------------------------------------------
def _read_shapes(path: pathlib.Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape, *_ = line.split("\t")
            shapes[name] = tuple(ast.literal_eval(shape))
    return shapes


def _released_groups() -> list[list[pathlib.Path]]:
    """Released state dicts grouped by identical (name, shape) lists (LSUN cat and bedroom share one)."""
    groups: dict[tuple, list[pathlib.Path]] = {}
    for path in RELEASED:
        groups.setdefault(tuple(_read_shapes(path).items()), []).append(path)
    return list(groups.values())


@pytest.mark.parametrize("paths", _released_groups(), ids=lambda ps: "+".join(p.stem for p in ps))
def test_released_state_dicts_map_onto_the_model(paths):
    shapes = _read_shapes(paths[0])
    cfg = model_config_from_official(shapes)
    abstract = _abstract(cfg)
    # zero-stride stand-ins with the real shapes: no memory for billions of parameters
    fake = {name: np.broadcast_to(np.zeros((), np.float32), shape) for name, shape in shapes.items()}
    state, unused = rq_transformer_state_from_official(fake, abstract)
    assert unused == []
    converted = dict(nnx.to_flat_state(state))
    model_params = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    assert len(model_params) == len(shapes) == len(converted)
    for p, var in model_params:
        assert official_name(p) in shapes and var.get_value().shape == converted[p].shape, p
    assert cfg.code_shape == (8, 8, 4) and cfg.embed_dim == 256 and cfg.d_model // cfg.num_heads == 64
    name = paths[0].name
    if name.startswith("cc3m"):
        assert (cfg.cond, cfg.text_len, cfg.text_vocab_size) == ("text", 32, 16384)
        assert abstract.cond_classifier is not None and abstract.spatial_len == 95
    elif name.startswith("in256"):
        assert (cfg.cond, cfg.num_classes) == ("class", 1000)
    else:  # LSUN cat/bedroom/church, FFHQ: unconditional, one learned start token
        assert cfg.cond == "none" and abstract.spatial_len == 64


# ---- (d) causality ------------------------------------------------------------------------------------------
def test_causality(tiny, golden):
    model, codebook = tiny
    codes = jnp.asarray(golden["tf/codes"][:1])
    cond = jnp.asarray(golden["tf/cond"][:1])
    base = np.asarray(_forward(model, codes, cond, codebook)).reshape(64 * 4, 64)
    for t, d in [(0, 0), (9, 2), (27, 3), (63, 1)]:
        changed = codes.reshape(1, 64, 4).at[0, t, d].set((codes.reshape(1, 64, 4)[0, t, d] + 1) % 64)
        out = np.asarray(_forward(model, changed.reshape(1, 8, 8, 4), cond, codebook)).reshape(64 * 4, 64)
        flat = t * 4 + d
        np.testing.assert_array_equal(out[: flat + 1], base[: flat + 1], err_msg=f"code ({t}, {d})")
        if flat + 1 < out.shape[0]:
            assert not np.allclose(out[flat + 1], base[flat + 1])


# ---- (e) dropout and gradients ------------------------------------------------------------------------
def test_dropout_and_gradients():
    model = _small_model("text", dropout=0.1, attn_dropout=0.1, embd_dropout=0.1)
    codes, c, codebook = _small_inputs(model)
    train = [_forward(model, codes, c, codebook, jax.random.key(i), train=True) for i in (0, 0, 1)]
    np.testing.assert_array_equal(np.asarray(train[0]), np.asarray(train[1]))
    assert not np.allclose(np.asarray(train[0]), np.asarray(train[2]))
    with pytest.raises(ValueError, match="PRNG key"):
        model(codes, c, codebook_KxC=codebook, train=True)

    def loss_fn(m: RQTransformer) -> jax.Array:
        logits, cond_logits = m.forward_with_cond_logits(codes, c, codebook_KxC=codebook, train=True,
                                                         rng=jax.random.key(3))
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), codes[..., None], -1).mean()
        text_nll = -jnp.take_along_axis(jax.nn.log_softmax(cond_logits), c[:, 1:, None], -1).mean()
        return nll + 0.1 * text_nll

    grads = nnx.jit(nnx.grad(loss_fn))(model)
    for path, g in nnx.to_flat_state(grads):
        g = np.asarray(g.get_value())
        assert np.all(np.isfinite(g)), path
        if path == ("pos_emb_hw",):  # the last position is never an input (official behaviour too)
            assert np.all(g[-1] == 0) and np.all(np.any(g[:-1] != 0, axis=-1))
        elif path == ("cond_emb", "embedding"):
            assert np.any(g != 0)  # only the rows of the tokens used
        else:
            assert np.any(g != 0), path
