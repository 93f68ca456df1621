"""The compiled KV-cached sampler: greedy = argmax path, seeds reproduce, filters do what they say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rq_jax.convert.rq_transformer import model_config_from_official, rq_transformer_params_from_official
from rq_jax.models.rq_transformer import RQTransformer, logits_with_cache
from rq_jax.sampling import SamplingConfig, filter_logits, sample_codes


@pytest.fixture(scope="module")
def tiny(golden):
    sd = {k[len("tf/param/"):]: v for k, v in golden.items() if k.startswith("tf/param/")}
    model = nnx.eval_shape(lambda: RQTransformer(model_config_from_official(sd, num_heads=4), rngs=nnx.Rngs(0)))
    assert rq_transformer_params_from_official(sd, model) == []
    codebook = jnp.asarray(golden["vae/param/quantizer.codebooks.0.weight"][:-1])
    return model, codebook


def test_top_k_1_is_the_argmax_path(tiny):
    model, codebook = tiny
    cond = jnp.asarray([3, 7])
    codes = sample_codes(model, codebook, cond, jax.random.key(0), batch=2, cfg=SamplingConfig(top_k=1))
    logits = logits_with_cache(model, codes, cond, codebook)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(jnp.argmax(logits, -1)))
    # temperature does not matter for greedy decoding, and neither does the seed
    codes2 = sample_codes(model, codebook, cond, jax.random.key(5), batch=2,
                          cfg=SamplingConfig(top_k=1, temperature=0.3))
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(codes2))


def test_same_seed_same_codes_and_top_p_keeps_the_nucleus(tiny):
    model, codebook = tiny
    cond = jnp.asarray([1, 2])
    cfg = SamplingConfig(top_k=(8, 8, 4, 4), top_p=0.9, temperature=1.0)
    a = sample_codes(model, codebook, cond, jax.random.key(1), batch=2, cfg=cfg)
    b = sample_codes(model, codebook, cond, jax.random.key(1), batch=2, cfg=cfg)
    c = sample_codes(model, codebook, cond, jax.random.key(2), batch=2, cfg=cfg)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # every sampled code is inside the top-k of its own (teacher-forced) logits
    logits = np.asarray(logits_with_cache(model, a, cond, codebook))
    rank = (logits > np.take_along_axis(logits, np.asarray(a)[..., None], -1)).sum(-1)
    assert (rank[..., :2] < 8).all() and (rank[..., 2:] < 4).all()


def test_filter_logits_by_hand():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_array_equal(np.isfinite(np.asarray(filter_logits(logits, top_k=2))), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(filter_logits(logits, top_p=0.75))), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(filter_logits(logits, top_p=0.8))), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(filter_logits(logits, top_p=0.81))), [[1, 1, 1, 0]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(filter_logits(logits, top_p=0.1))), [[1, 0, 0, 0]])


def _filter_numpy(logits, top_k, top_p):
    """Sort-based reference: top-k, then the nucleus of the renormalised survivors."""
    out = logits.astype(np.float64).copy()
    for row in out:
        if 0 < top_k < row.size:
            row[row < np.sort(row)[::-1][top_k - 1]] = -np.inf
        if top_p < 1:
            s = np.sort(row)[::-1]
            p = np.exp(s - s[0])
            p /= p.sum()
            before = np.cumsum(p) - p
            row[row < s[before < top_p].min()] = -np.inf
    return np.isfinite(out)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (64, 1.0), (64, 0.9), (64, 0.2), (1, 0.5), (0, 1.0)])
def test_filter_logits_matches_a_sort_based_reference(top_k, top_p):
    logits = np.asarray(jax.random.normal(jax.random.key(3), (8, 4096)) * 3)
    got = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p)))
    np.testing.assert_array_equal(got, _filter_numpy(logits, top_k, top_p))


def test_top_k_filter_compiles_without_a_full_sort():
    """XLA:CPU turns a TopK whose indices are unused into a sort of all K logits (7x slower at K = 16384)."""
    hlo = jax.jit(lambda x: filter_logits(x, 1024)).lower(jnp.zeros((8, 16384))).compile().as_text()
    assert " sort(" not in hlo


def test_top_k_and_top_p_filter_compile_inside_shard_map():
    """Regression: an optimization barrier on TopK aborted XLA's compiler inside shard_map."""
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    x = jax.random.normal(jax.random.key(0), (len(jax.devices()) * 2, 512))
    x = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
    fn = jax.jit(jax.shard_map(lambda v: filter_logits(v, 16, 0.9), mesh=mesh, in_specs=P("data"),
                               out_specs=P("data")))
    np.testing.assert_array_equal(np.asarray(fn(x)), np.asarray(filter_logits(x, 16, 0.9)))


def test_bad_sampling_settings():
    with pytest.raises(ValueError, match="top_k has 2 values but the model has 4 depths"):
        SamplingConfig(top_k=(1, 2)).per_depth(4)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=0.0).per_depth(4)


def _unrolled_sampler(model, codebook, cond, rng, batch, cfg):
    """The loop written out (prefill, D depth steps per position in Python, spatial steps) as a reference."""
    h_, w_, depth = model.code_shape
    guided = cfg.cfg_scale != 1.0
    if guided:
        cond = jnp.concatenate([cond, model.null_cond(batch)])
    rows = 2 * batch if guided else batch
    h, cache = model.spatial_prefill(model.init_cache(rows), cond)
    out = []
    for t in range(h_ * w_):
        codes_BxD = jnp.zeros((rows, depth), jnp.int32)
        for d, (temp, top_k, top_p) in enumerate(cfg.per_depth(depth)):
            logits, cache = model.depth_step(cache, h, codes_BxD, d, codebook_KxC=codebook)
            if guided:
                logits = logits[batch:] + cfg.cfg_scale * (logits[:batch] - logits[batch:])
            rng, sub = jax.random.split(rng)
            code = jax.random.categorical(sub, filter_logits(logits / temp, top_k, top_p), axis=-1).astype(jnp.int32)
            codes_BxD = codes_BxD.at[:, d].set(jnp.concatenate([code, code]) if guided else code)
        out.append(codes_BxD[:batch])
        h, cache = model.spatial_step(cache, codes_BxD, t, codebook_KxC=codebook)
    return jnp.stack(out, 1).reshape(batch, h_, w_, depth)


def _small_model(cond_kind, spatial_layers=2, depth=4):
    from rq_jax.models.rq_transformer import rq_transformer_model_config

    config = rq_transformer_model_config(
        vocab_size=64, code_shape=(2, 3, depth), embed_dim=16, d_model=32, num_heads=4, spatial_layers=spatial_layers,
        depth_layers=2, cond=cond_kind, num_classes=10, text_vocab_size=50, text_len=5, cfg_null=cond_kind != "none")
    graph, state = nnx.split(RQTransformer(config, rngs=nnx.Rngs(0)))
    return nnx.merge(graph, jax.tree.map(lambda x: x * 3.0, state))  # sharper distributions than the init's


@pytest.mark.parametrize("cond_kind", ["none", "class", "text"])
def test_the_rolled_loop_draws_the_codes_of_the_unrolled_one(cond_kind):
    """The sampler runs the depths as a loop and feeds the last condition token through the loop's spatial
    step; its codes equal those of the plain loop (prefill, Python-unrolled depths) for the same key."""
    model = _small_model(cond_kind)
    codebook = jax.random.normal(jax.random.key(1), (64, 16))
    cond = {"none": None, "class": jnp.arange(3), "text": jax.random.randint(jax.random.key(2), (3, 5), 0, 50)}
    configs = [SamplingConfig(top_k=(8, 8, 4, 0), top_p=(0.9, 1.0, 0.9, 0.8), temperature=(1.0, 0.5, 2.0, 1.0)),
               SamplingConfig(top_k=16, top_p=0.9, cfg_scale=1.0 if cond_kind == "none" else 2.0)]
    for cfg in configs:
        want = _unrolled_sampler(model, codebook, cond[cond_kind], jax.random.key(3), 3, cfg)
        got = sample_codes(model, codebook, cond[cond_kind], jax.random.key(3), batch=3, cfg=cfg)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_the_sampler_program_holds_each_block_once():
    """Compile time grows with the copies of the transformer blocks in the program: the spatial blocks
    appear once (no separate prefill copy) and the depth blocks once whatever D is."""

    def dots(**kw):
        model = _small_model("class", **kw)
        graph, state = nnx.split(model)
        lowered = jax.jit(lambda s: sample_codes(nnx.merge(graph, s), jnp.zeros((64, 16)), jnp.arange(2),
                                                 jax.random.key(0), batch=2, cfg=SamplingConfig(top_k=8)))
        return lowered.lower(state).as_text().count("stablehlo.dot_general")

    base = dots()
    assert dots(depth=8) == base  # depths are a loop
    per_block = dots(spatial_layers=3) - base
    assert 0 < per_block <= 10  # q, k, v, out, fc1, fc2, and the two attention products: one copy per block
