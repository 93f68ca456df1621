"""Every released official state dict (tests/golden/official_state_dicts) maps at full size: zero-stride stand-ins
with the real names and shapes, yaml synthesised from the official configs' values, a shape-only pass."""

import numpy as np
import pytest
from flax import nnx

from rq_jax.convert import rq_transformer as tf_convert
from rq_jax.convert import rqvae as vae_convert
from rq_jax.convert.official_rqvae_config import stage1_config_from_official
from rq_jax.convert.official_transformer_config import stage2_config_from_official
from rq_jax.convert.official_weights import convert_stage1, convert_stage2
from tests.convert.official_files import (
    STAGE1_RELEASED,
    STAGE2_RELEASED,
    STATE_DICTS,
    expected_flax_layout,
    needs_torch,
    read_shapes,
    stage1_yaml,
    stage2_yaml,
    zero_stride,
)


# ---- (a) every released state dict at full size, shape-only -----------------------------------------------
def test_tables_cover_every_released_file():
    stems = {p.stem for p in STATE_DICTS.glob("*.txt")}
    assert stems == set(STAGE1_RELEASED) | set(STAGE2_RELEASED)


@needs_torch
@pytest.mark.parametrize("stem", sorted(STAGE1_RELEASED))
def test_released_stage1_maps_at_full_size(stem):
    n_embed, attn, dataset = STAGE1_RELEASED[stem]
    shapes = read_shapes(stem)
    config, notes = stage1_config_from_official(shapes, stage1_yaml(n_embed, attn, dataset), stem)
    assert notes == []
    m = config.model
    assert (m.resolution, m.ch, tuple(m.ch_mult), m.num_res_blocks, tuple(m.attn_resolutions)) == \
        (256, 128, (1, 1, 2, 2, 4, 4), 2, tuple(attn))
    assert (m.codebook_size, m.embed_dim, m.z_channels, tuple(m.code_shape)) == (n_embed, 256, 256, (8, 8, 4))
    assert config.loss.recon == "l2" and config.model.quantizer.restart and config.train.b1 == 0.5
    inferred, notes = stage1_config_from_official(shapes, None, stem)
    assert "no config.yaml" in notes[0]
    for key in ("resolution", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim",
                "codebook_size", "code_shape"):
        assert tuple(np.atleast_1d(inferred.model[key])) == tuple(np.atleast_1d(m[key])), key

    converted = convert_stage1(zero_stride(shapes), config)
    gen = dict(nnx.to_flat_state(converted.state["gen"]))
    assert len(gen) + 12 == len(shapes)  # + weight, cluster_size_ema, embed_ema of 4 aliased codebooks
    for path, var in gen.items():
        name = vae_convert.official_name(path)
        want = expected_flax_layout(name, np.broadcast_to(np.uint8(0), shapes[name])).shape
        assert var.get_value().shape == want, name
    (cb,) = (v.get_value() for _, v in nnx.to_flat_state(converted.state["codebook"]))
    assert cb.embedding_KxC.shape == (n_embed, 256) and cb.cluster_size_K.shape == (n_embed,)
    # the report accounts for every source tensor exactly once
    reported = [line.split()[1] for line in converted.report]
    assert sorted(reported) == sorted(shapes)
    assert sum("alias of" in line for line in converted.report) == 9
    assert any("zero padding row dropped" in line for line in converted.report)


@needs_torch
@pytest.mark.parametrize("stem", sorted(STAGE2_RELEASED))
def test_released_stage2_maps_at_full_size(stem):
    stage1, d_model, body, head, heads, vocab, cond_vocab, cond_len, dataset = STAGE2_RELEASED[stem]
    n_embed, attn, dataset1 = STAGE1_RELEASED[stage1]
    config1, _ = stage1_config_from_official(read_shapes(stage1), stage1_yaml(n_embed, attn, dataset1))
    shapes = read_shapes(stem)
    yaml_cfg = stage2_yaml(d_model, body, head, heads, vocab, cond_vocab, cond_len, dataset)
    config, notes = stage2_config_from_official(shapes, yaml_cfg, config1, stem)
    m = config.model
    assert notes == [] and m.cfg_null is False
    assert (m.d_model, m.num_heads, m.spatial_layers, m.depth_layers, m.mlp_ratio) == (d_model, heads, body, head, 4)
    assert (m.vocab_size, m.embed_dim, tuple(m.code_shape)) == (vocab, 256, (8, 8, 4))
    if cond_len > 1:
        assert (m.cond, m.text_len, m.text_vocab_size) == ("text", 32, 16384)
    elif cond_vocab > 1:
        assert (m.cond, m.num_classes) == ("class", 1000)
    else:
        assert m.cond == "none"
    assert (config.soft.temperature, config.train.batch_size, config.sample.top_k) == (0.5, 2048, 250)
    inferred, notes = stage2_config_from_official(shapes, None, config1, stem)
    assert "no config.yaml" in notes[0]
    assert {k: v for k, v in inferred.model.items() if "dropout" not in k} == \
        {k: v for k, v in m.items() if "dropout" not in k}

    converted = convert_stage2(zero_stride(shapes), config)
    params = nnx.to_flat_state(converted.state["params"])
    assert len(params) == len(shapes)
    src_size = dst_size = 0
    for path, var in params:
        name = tf_convert.official_name(path)
        want = expected_flax_layout(name, np.broadcast_to(np.uint8(0), shapes[name])).shape
        assert var.get_value().shape == want, name
        src_size += int(np.prod(shapes[name]))
        dst_size += int(np.prod(want))
    assert src_size == dst_size
    assert sorted(line.split()[1] for line in converted.report) == sorted(shapes)
    assert any(path[0] == "cond_classifier" for path, _ in params) == (cond_len > 1)
