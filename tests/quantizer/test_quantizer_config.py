"""QuantizerConfig is the one source of the quantizer's defaults: the ConfigDict and the functions follow it."""

import inspect

import pytest

from rq_jax.models.rqvae import rqvae_model_config
from rq_jax.quantizer import (
    QUANTIZER_FIELDS,
    QuantizerConfig,
    ema_update,
    quantizer_config_dict,
    rq_quantize_train,
)


def test_config_dict_is_generated_from_the_dataclass():
    d, q = quantizer_config_dict(), QuantizerConfig()
    assert set(d.keys()) == set(QUANTIZER_FIELDS) and "depth" not in d  # depth comes from code_shape
    assert {k: d[k] for k in QUANTIZER_FIELDS} == {k: getattr(q, k) for k in QUANTIZER_FIELDS}
    assert rqvae_model_config().quantizer.to_dict() == d.to_dict()
    assert quantizer_config_dict(decay=0.9).decay == 0.9
    with pytest.raises(ValueError, match="Unknown quantizer field 'decy'"):
        quantizer_config_dict(decy=0.9)


def test_function_defaults_are_the_dataclass_defaults():
    q = QuantizerConfig()
    train = inspect.signature(rq_quantize_train).parameters
    for name in ("decay", "eps", "restart", "restart_threshold", "impl", "commitment_reduction", "restart_from"):
        assert train[name].default == getattr(q, name), name
    assert train["update"].default == q.update_mode
    ema = inspect.signature(ema_update).parameters
    assert (ema["decay"].default, ema["eps"].default) == (q.decay, q.eps)
