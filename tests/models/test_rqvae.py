"""RQ-VAE model (Flax NNX) and the official-parameter mapping, against the official golden outputs.

Models are built abstractly (`nnx.eval_shape`) and filled with the golden parameters, so no random
initialisation is compiled; each forward graph of the tiny model is jitted once per module.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.convert.rqvae import (
    official_name,
    rqvae_params_from_official,
    rqvae_params_to_official,
    rqvae_state_from_official,
)
from rq_jax.models import LAST_LAYER_PATH, RQVAE, CodebookVar, QuantizerConfig, rqvae_model_config
from rq_jax.quantizer import CodebookState

STATE_DICTS = pathlib.Path(__file__).parents[1] / "golden" / "official_state_dicts"
PREFIX = "vae/param/"


def tiny_config(**overrides):
    """The golden tiny RQ-VAE (tests/golden/README.md), restarts off as in the golden training forward."""
    kw = dict(resolution=64, ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(8,),
              z_channels=32, embed_dim=32, codebook_size=64, code_shape=(8, 8, 4),
              quantizer=dict(restart=False))
    kw.update(overrides)
    return rqvae_model_config(**kw)


def abstract_model(cfg):
    return nnx.eval_shape(lambda: RQVAE(cfg, rngs=nnx.Rngs(0)))


def golden_state_dict(golden):
    return {k[len(PREFIX):]: v for k, v in golden.items() if k.startswith(PREFIX)}


def golden_model(golden, cfg=None):
    model = abstract_model(tiny_config() if cfg is None else cfg)
    assert rqvae_params_from_official(golden_state_dict(golden), model) == []
    return model


def nhwc(x_NCHW):
    return jnp.asarray(np.transpose(x_NCHW, (0, 2, 3, 1)))


def read_state_dict_shapes(path):
    """name -> shape from an `official_state_dicts/*.txt` file (name, shape, dtype; tab-separated)."""
    shapes = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape, _ = line.split("\t")
            shapes[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


# ---- parity with the official implementation -----------------------------------------------------


@pytest.fixture(scope="module")
def model(golden):
    return golden_model(golden)


@pytest.fixture(scope="module")
def eval_outputs(model, golden):
    @nnx.jit
    def run(m, x, zq):
        recon, out, *_ = m(x)
        codes = m.encode(x)
        return dict(
            z=m.encode_features(x), recon=recon, out=out, codes=codes,
            recon_zq=m.decode_features(zq), recon_codes=m.decode(codes),
            partial_full=m.decode_partial(codes, m.depth), partial_1=m.decode_partial(codes, 1),
        )

    return jax.device_get(run(model, nhwc(golden["vae/x"]), jnp.asarray(golden["vae/zq_sum"])))


def test_eval_parity_with_official(eval_outputs, golden):
    o = eval_outputs
    np.testing.assert_allclose(o["z"], golden["vae/z_e"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(o["codes"], golden["vae/codes"])
    np.testing.assert_array_equal(o["out"].codes, golden["vae/codes"])
    assert o["codes"].dtype == np.int32
    np.testing.assert_allclose(o["out"].quantized, golden["vae/zq_sum"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(o["out"].commit_loss, golden["vae/commit_loss"], rtol=1e-5)
    recon_NCHW = golden["vae/recon"]
    for key in ("recon", "recon_zq", "recon_codes"):
        assert o[key].dtype == np.float32
        np.testing.assert_allclose(np.transpose(o[key], (0, 3, 1, 2)), recon_NCHW, atol=1e-4, rtol=0)


def test_decode_partial(eval_outputs, model):
    np.testing.assert_array_equal(eval_outputs["partial_full"], eval_outputs["recon_codes"])
    assert eval_outputs["partial_1"].shape == eval_outputs["recon_codes"].shape
    assert not np.allclose(eval_outputs["partial_1"], eval_outputs["recon_codes"], atol=1e-3)
    codes = jnp.zeros((1, 8, 8, 4), jnp.int32)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="depth"):
            model.decode_partial(codes, bad)


@pytest.fixture(scope="module")
def train_step(model):
    """jit(grad) of a reconstruction + commitment loss w.r.t. params AND codebook state."""
    graphdef, params, codebook = nnx.split(model, nnx.Param, CodebookVar)

    @jax.jit
    def step(params, codebook, x):
        def loss_fn(params, codebook):
            m = nnx.merge(graphdef, params, codebook)
            recon, out, new_state, h = m.forward_train(x, None)
            return jnp.mean(jnp.square(recon - x)) + 0.25 * out.commit_loss, (out, new_state, recon, h)

        return jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(params, codebook)

    return params, codebook, step


def test_train_forward_parity_and_gradients(train_step, model, golden):
    params, codebook, step = train_step
    old_state = jax.device_get(model.codebook_state)
    x = nhwc(golden["vae/x"])
    (g_params, g_codebook), (out, new_state, recon, h) = jax.device_get(step(params, codebook, x))

    # The official training forward (restarts off): codes, loss and the EMA-updated codebook.
    np.testing.assert_array_equal(out.codes, golden["vae/train/codes"])
    np.testing.assert_allclose(out.commit_loss, golden["vae/train/commit_loss"], rtol=1e-5)
    np.testing.assert_allclose(new_state.embedding_KxC, golden["vae/train/weight"][:-1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(new_state.cluster_size_K, golden["vae/train/cluster_size_ema"], rtol=1e-5)
    np.testing.assert_allclose(new_state.embed_sum_KxC, golden["vae/train/embed_ema"], rtol=1e-5, atol=1e-6)
    assert isinstance(new_state, CodebookState)
    assert not np.allclose(new_state.embedding_KxC, old_state.embedding_KxC)
    # The module is not mutated: the trainer assigns the new state.
    np.testing.assert_array_equal(model.codebook_state.embedding_KxC, old_state.embedding_KxC)

    # Gradients reach every encoder parameter (through straight-through + commitment), none the codebook.
    for path, g in nnx.to_flat_state(g_params["encoder"]):
        assert np.any(np.asarray(g.get_value()) != 0), f"zero gradient at encoder/{'/'.join(map(str, path))}"
    for name in ("quant_conv", "post_quant_conv", "decoder"):
        assert any(np.any(np.asarray(g.get_value()) != 0) for _, g in nnx.to_flat_state(g_params[name]))
    for leaf in jax.tree.leaves(g_codebook):
        np.testing.assert_array_equal(leaf, 0.0)
    g_last = dict(nnx.to_flat_state(g_params))[LAST_LAYER_PATH].get_value()
    assert g_last.shape == model.last_layer_kernel.get_value().shape
    # The last features are decoder.conv_out's input: recon = conv_out(h).
    np.testing.assert_allclose(model.decoder.conv_out(jnp.asarray(h)), recon, atol=1e-5)


def test_train_with_dropout_and_restarts(golden):
    model = golden_model(golden, tiny_config(dropout=0.1, quantizer=dict(restart=True)))
    x = nhwc(golden["vae/x"])
    with pytest.raises(ValueError, match="PRNG key"):
        model.forward_train(x, None)
    fwd = nnx.jit(lambda m, x, rng: m.forward_train(x, rng))
    r1, out1, s1, _ = jax.device_get(fwd(model, x, jax.random.key(1)))
    r2, out2, s2, _ = jax.device_get(fwd(model, x, jax.random.key(2)))
    assert not np.allclose(r1, r2)  # dropout is on in training mode
    # Restarts: codes whose EMA count falls below 1 restart from current vectors with a count of 1, so
    # every count ends >= 1 and the statistics differ from the golden no-restart update.
    assert np.all(s1.cluster_size_K >= 1.0 - 1e-6)
    assert not np.allclose(s1.embed_sum_KxC, golden["vae/train/embed_ema"])
    assert r1.shape == x.shape and out1.codes.shape == (2, 8, 8, 4)


# ---- the official state dicts of the released models ----------------------------------------------


@pytest.mark.parametrize(
    "filename, overrides",
    [
        ("stage1_imagenet_rqvae_8x8x4.txt", {}),
        ("stage1_ffhq_rqvae_8x8x4.txt", dict(codebook_size=2048, attn_resolutions=(16,))),
    ],
)
def test_released_state_dicts_map_completely(filename, overrides):
    shapes = read_state_dict_shapes(STATE_DICTS / filename)
    model = abstract_model(rqvae_model_config(**overrides))
    rng = np.random.default_rng(0)
    state_dict, shared = {}, {}
    for name, shape in shapes.items():
        if name.startswith("quantizer.codebooks."):  # aliases of one shared codebook
            field = name.rsplit(".", 1)[1]
            if field not in shared:
                shared[field] = rng.random(shape, dtype=np.float32)
                if field == "weight":
                    shared[field][-1] = 0.0
            state_dict[name] = shared[field]
        else:
            state_dict[name] = rng.random(shape, dtype=np.float32)
    state, unused = rqvae_state_from_official(state_dict, model)
    assert unused == []

    converted = dict(nnx.to_flat_state(state))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(params) + 1 == len(converted)
    for path, var in params:
        assert converted[path].shape == var.get_value().shape
    name = "encoder.down.0.block.0.conv1.weight"
    np.testing.assert_array_equal(
        converted[("encoder", "down", 0, "block", 0, "conv1", "kernel")],
        np.transpose(state_dict[name], (2, 3, 1, 0)),
    )
    cb = converted[("codebook",)]
    k = model.codebook_state.embedding_KxC.shape[0]
    np.testing.assert_array_equal(cb.embedding_KxC, shared["weight"][:k])
    np.testing.assert_array_equal(cb.cluster_size_K, shared["cluster_size_ema"])
    np.testing.assert_array_equal(cb.embed_sum_KxC, shared["embed_ema"])
    assert sum(int(np.prod(v.get_value().shape)) for _, v in params) == sum(
        int(np.prod(s)) for n, s in shapes.items() if not n.startswith("quantizer.")
    )


def test_round_trip_to_official(model, golden):
    back = rqvae_params_to_official(model)
    sd = golden_state_dict(golden)
    assert set(back) == set(sd)
    for name, value in sd.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_converter_errors(golden):
    model = abstract_model(tiny_config())
    sd = golden_state_dict(golden)

    with pytest.raises(KeyError, match="encoder.conv_in.weight"):
        rqvae_state_from_official({k: v for k, v in sd.items() if k != "encoder.conv_in.weight"}, model)

    bad = dict(sd, **{"decoder.conv_out.weight": np.zeros((3, 32, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"decoder\.conv_out\.weight.*\(3, 32, 1, 1\).*\(3, 3, 32, 3\)"):
        rqvae_state_from_official(bad, model)

    extra = dict(sd, **{"loss.something": np.zeros(3, np.float32)})
    assert rqvae_state_from_official(extra, model)[1] == ["loss.something"]

    unshared = dict(sd)
    unshared["quantizer.codebooks.2.embed_ema"] = sd["quantizer.codebooks.2.embed_ema"] + 1.0
    with pytest.raises(ValueError, match="shared codebooks"):
        rqvae_state_from_official(unshared, model)

    with pytest.raises(KeyError, match="codebooks"):
        rqvae_state_from_official({k: v for k, v in sd.items() if "codebooks.3" not in k}, model)

    path = ("decoder", "up", 1, "upsample", "conv", "kernel")
    assert official_name(path) == "decoder.up.1.upsample.conv.weight"
    assert official_name(("encoder", "mid", "attn_1", "norm", "scale")) == "encoder.mid.attn_1.norm.weight"


# ---- shapes, configs, variables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, code_shape",
    [
        (dict(), (8, 8, 4)),  # 64 px, f = 8
        (dict(ch_mult=(1, 2, 4), code_shape=(16, 16, 1), attn_resolutions=(16,)), (16, 16, 1)),  # f = 4
        (dict(code_shape=(8, 8, 8)), (8, 8, 8)),
        (dict(resolution=32, ch_mult=(1, 2), code_shape=(16, 16, 2), attn_resolutions=()), (16, 16, 2)),
    ],
)
def test_shapes_for_code_shapes(overrides, code_shape):
    cfg = tiny_config(**overrides)
    model = abstract_model(cfg)
    r = cfg.resolution
    x = jax.ShapeDtypeStruct((2, r, r, 3), jnp.float32)
    codes_in = jax.ShapeDtypeStruct((2, *code_shape), jnp.int32)

    def run(m, x, codes):
        recon, out, *_ = m(x)
        recon_t, out_t, state, h = m(x, train=True)  # = forward_train(x, None): restarts and dropout off
        return dict(z=m.encode_features(x), codes=m.encode(x), recon=recon, out=out, recon_t=recon_t,
                    state=state, dec=m.decode(codes), part=m.decode_partial(codes, 1), h=h)

    o = nnx.eval_shape(run, model, x, codes_in)
    h, w, d = code_shape
    assert o["z"].shape == (2, h, w, 32) and o["z"].dtype == jnp.float32
    assert o["codes"].shape == (2, h, w, d) and o["codes"].dtype == jnp.int32
    assert o["out"].zhat_cum.shape == (2, h, w, d, 32)
    for key in ("recon", "recon_t", "dec", "part"):
        assert o[key].shape == (2, r, r, 3) and o[key].dtype == jnp.float32
    assert o["state"].embedding_KxC.shape == (64, 32)
    assert o["h"].shape == (2, r, r, 32)  # the input of decoder.conv_out
    assert model.depth == d and model.code_shape == code_shape


def test_bfloat16_compute_keeps_float32_params_and_bottleneck():
    model = abstract_model(tiny_config(dtype="bfloat16"))
    assert model.encoder.conv_in.kernel.get_value().dtype == jnp.float32
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    z = nnx.eval_shape(lambda m, x: m.encode_features(x), model, x)
    recon, out, _, _ = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert z.dtype == out.quantized.dtype == recon.dtype == jnp.float32


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(resolution=60), "not divisible by the downsampling factor f=8"),
        (dict(code_shape=(16, 16, 1)), r"does not match the 8x8 latent grid.*len\(ch_mult\) = 3"),
        (dict(ch=48), "multiples of 32"),
        (dict(code_shape=(8, 8)), r"code_shape must be \(h, w, depth\)"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        abstract_model(tiny_config(**overrides))


def test_bad_inputs_and_config_fields_raise():
    model = abstract_model(tiny_config())
    with pytest.raises(ValueError, match="divisible by f=8"):
        nnx.eval_shape(lambda m, x: m.encode(x), model, jax.ShapeDtypeStruct((1, 60, 60, 3), jnp.float32))
    with pytest.raises(ValueError, match="NHWC"):
        nnx.eval_shape(lambda m, x: m.encode(x), model, jax.ShapeDtypeStruct((1, 3, 64, 64), jnp.float32))
    with pytest.raises(ValueError, match="Unknown RQ-VAE model config field 'chmult'"):
        rqvae_model_config(chmult=(1, 2))
    with pytest.raises(ValueError, match="Unknown quantizer field 'decy'"):
        rqvae_model_config(quantizer=dict(decy=0.9))
    with pytest.raises(ValueError, match="update mode 'twice'"):
        abstract_model(tiny_config(quantizer=dict(update_mode="twice")))


def test_default_config_is_official_imagenet():
    cfg = rqvae_model_config()
    assert (cfg.resolution, cfg.ch, tuple(cfg.ch_mult), cfg.num_res_blocks, tuple(cfg.attn_resolutions)) == (
        256, 128, (1, 1, 2, 2, 4, 4), 2, (8,))
    got = (cfg.z_channels, cfg.embed_dim, cfg.codebook_size, tuple(cfg.code_shape))
    assert got == (256, 256, 16384, (8, 8, 4))
    assert cfg.quantizer.decay == 0.99 and cfg.quantizer.restart
    cfg2 = rqvae_model_config(quantizer=dict(decay=0.9), ch_mult=[1, 2])
    assert cfg2.quantizer.decay == 0.9 and cfg2.quantizer.eps == 1e-5 and cfg2.ch_mult == (1, 2)


def test_codebook_is_explicit_state_not_param(model):
    params = nnx.state(model, nnx.Param)
    assert "codebook" not in params
    cb = nnx.state(model, CodebookVar)
    assert [p for p, _ in nnx.to_flat_state(cb)] == [("codebook",)]
    assert model.quantizer_config == QuantizerConfig(depth=4, restart=False)
    assert model.last_layer_kernel is model.decoder.conv_out.kernel
    assert model.last_layer_kernel.get_value().shape == (3, 3, 32, 3)

    m2 = abstract_model(tiny_config())
    new = CodebookState(jnp.ones((64, 32)), jnp.ones((64,)), jnp.ones((64, 32)))
    m2.set_codebook(new)
    np.testing.assert_array_equal(m2.codebook_state.embedding_KxC, 1.0)
