"""Weight-only bfloat16 for sampling: the kernels change dtype, nothing else does, and the logits stay close."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from rq_jax.models.rq_transformer import RQTransformer, rq_transformer_model_config
from rq_jax.models.weight_dtype import with_weight_dtype
from rq_jax.sampling import SamplingConfig, sample_codes


def _model():
    config = rq_transformer_model_config(code_shape=(2, 2, 2), vocab_size=32, embed_dim=8, d_model=32, num_heads=2,
                                         spatial_layers=2, depth_layers=1, cond="class", num_classes=3)
    return RQTransformer(config, rngs=nnx.Rngs(0))


def test_bfloat16_weights_are_a_copy_with_bf16_kernels_and_f32_accumulation():
    model = _model()
    fast = with_weight_dtype(model, "bfloat16")
    linears = [m for _, m in nnx.iter_modules(fast) if isinstance(m, nnx.Linear)]
    assert linears and all(m.kernel.get_value().dtype == jnp.bfloat16 for m in linears)
    assert all(m.preferred_element_type == jnp.float32 for m in linears)
    # the original is untouched; everything that is not a Linear kernel is the same array
    assert all(m.kernel.get_value().dtype == jnp.float32
               for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear))
    flat, flat_fast = dict(nnx.to_flat_state(nnx.state(model))), dict(nnx.to_flat_state(nnx.state(fast)))
    for path, var in flat.items():
        if path[-1] != "kernel":
            assert flat_fast[path].get_value() is var.get_value(), path
    assert with_weight_dtype(model, "float32") is model


def test_bfloat16_logits_stay_close_and_sampling_runs():
    model = _model()
    fast = with_weight_dtype(model, jnp.bfloat16)
    codebook = jax.random.normal(jax.random.key(1), (32, 8))
    cond = jnp.array([0, 1, 2, 0])
    codes = sample_codes(model, codebook, cond, jax.random.key(2), batch=4, cfg=SamplingConfig())
    logits = model(codes, cond, codebook_KxC=codebook)
    logits_fast = fast(codes, cond, codebook_KxC=codebook)
    assert logits_fast.dtype == jnp.float32
    # bf16 has an 8-bit mantissa: errors of ~1% of the logits' scale, far from the float32 ones
    err = float(jnp.max(jnp.abs(logits - logits_fast)))
    assert 0 < err < 0.02 * float(jnp.max(jnp.abs(logits))) + 1e-3, err
    out = sample_codes(fast, codebook, cond, jax.random.key(2), batch=4, cfg=SamplingConfig(top_k=8, top_p=0.9))
    assert out.shape == codes.shape and int(out.max()) < 32


def test_unsupported_weight_dtype():
    with pytest.raises(ValueError, match="Weight dtype 'int8' is not supported"):
        with_weight_dtype(_model(), "int8")
