"""abstract_module gives exactly what nnx.eval_shape gives (graph and abstract state), only faster."""

import jax
import pytest
from flax import nnx

from rq_jax.models.abstract import abstract_module
from rq_jax.models.rq_transformer import RQTransformer, rq_transformer_model_config
from rq_jax.models.rqvae import RQVAE, rqvae_model_config


@pytest.mark.parametrize("kind", ["rqvae", "transformer"])
def test_abstract_module_equals_eval_shape(kind):
    if kind == "rqvae":
        config = rqvae_model_config(resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                                    z_channels=16, embed_dim=16, code_shape=(16, 16, 2), codebook_size=64)
        ctor = RQVAE
    else:
        config = rq_transformer_model_config(code_shape=(2, 2, 2), vocab_size=32, embed_dim=8, d_model=32,
                                             num_heads=2, spatial_layers=2, depth_layers=1)
        ctor = RQTransformer
    fast = abstract_module(lambda rngs: ctor(config, rngs=rngs), seed=3)
    slow = nnx.eval_shape(lambda: ctor(config, rngs=nnx.Rngs(3)))
    assert nnx.graphdef(fast) == nnx.graphdef(slow)
    fast_state, slow_state = nnx.state(fast), nnx.state(slow)
    assert jax.tree.structure(fast_state) == jax.tree.structure(slow_state)
    for a, b in zip(jax.tree.leaves(fast_state), jax.tree.leaves(slow_state), strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype) == (b.shape, b.dtype)


def test_ref_rngs_draw_the_same_parameters_inside_jit():
    config = rq_transformer_model_config(code_shape=(2, 2, 2), vocab_size=32, embed_dim=8, d_model=32,
                                         num_heads=2, spatial_layers=1, depth_layers=1)
    from rq_jax.models.abstract import ref_rngs

    plain = jax.jit(lambda: nnx.state(RQTransformer(config, rngs=nnx.Rngs(5))))()
    refs = jax.jit(lambda: nnx.state(RQTransformer(config, rngs=ref_rngs(5))))()
    assert jax.tree.structure(plain) == jax.tree.structure(refs)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(refs), strict=True):
        assert (a == b).all()
