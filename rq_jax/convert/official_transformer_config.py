"""An official RQ-Transformer's config.yaml (or its tensor shapes) -> the rq_jax stage-2 run config.

The model is read from the shapes (`rq_jax.convert.rq_transformer.model_config_from_official`); the yaml
is cross-checked against them and against the stage-1 model, and its training recipe and sampling
settings are carried over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from rq_jax.convert import rq_transformer as tf_convert
from rq_jax.convert.official_yaml import MISSING, comparable, disagreement, set_recipe, yaml_value

# (model field, yaml key, the tensor that shows it)
_RQT_YAML = (
    ("d_model", "arch.embed_dim", "pos_emb_hw"),
    ("embed_dim", "arch.input_embed_dim", "input_mlp.weight"),
    ("vocab_size", "arch.vocab_size", "classifier.linear.weight"),
    ("vocab_size", "dataset.vocab_size", "classifier.linear.weight"),
    ("spatial_layers", "arch.body.n_layer", "body_transformer.blocks.*"),
    ("depth_layers", "arch.head.n_layer", "head_transformer.blocks.*"),
)
# official flags (value when absent: the official default) and the only value rq_jax supports
_RQT_FLAGS = {"input_emb_vqvae": (False, True), "head_emb_vqvae": (False, True), "cumsum_depth_ctx": (False, True),
              "shared_cls_emb": (False, True), "use_padding_emb": (False, False),
              "scaled_head_emb_vqvae": (False, False)}
_BLOCK_FLAGS = {"mlp_bias": (True, True), "attn_bias": (True, True), "gelu": ("v1", "v1")}
_RQT_RECIPE = (
    ("loss.temp", "soft.temperature"), ("loss.stochastic_codes", "soft.stochastic_codes"),
    ("optimizer.init_lr", "train.lr"), ("optimizer.weight_decay", "train.weight_decay"),
    ("experiment.total_batch_size", "train.batch_size"), ("experiment.epochs", "train.num_epochs"),
)


def _cond_of(block_size_cond: int, vocab_size_cond: int) -> dict[str, Any]:
    if block_size_cond > 1:
        return dict(cond="text", text_len=block_size_cond, text_vocab_size=vocab_size_cond)
    if vocab_size_cond <= 1:
        return dict(cond="none")
    return dict(cond="class", num_classes=vocab_size_cond)


def _sample_value(value: Any, off: Any, cast: Callable[[Any], Any]) -> Any:
    if value is None:
        return off
    if isinstance(value, list | tuple):
        values = tuple(off if v is None else cast(v) for v in value)
        return values[0] if len(set(values)) == 1 else values
    return cast(value)


def _supported_num_heads(arch: Mapping[str, Any], yaml_cfg: Mapping[str, Any] | None, where: str) -> int | None:
    """The yaml's attention head count (None without one), after rejecting options rq_jax does not implement."""
    for key, (default, supported) in _RQT_FLAGS.items():
        if yaml_cfg is not None and arch.get(key, default) != supported:
            raise ValueError(f"{where}: arch.{key} = {arch.get(key, default)!r} is not supported (rq_jax needs "
                             f"{supported!r}).")
    for stack in ("body", "head"):
        for key, (default, supported) in _BLOCK_FLAGS.items():
            value = yaml_value(arch, f"{stack}.block.{key}", default)
            if value != supported:
                raise ValueError(f"{where}: arch.{stack}.block.{key} = {value!r} is not supported (rq_jax needs "
                                 f"{supported!r}).")
    heads = {s: yaml_value(arch, f"{s}.block.n_head") for s in ("body", "head")}
    if None not in heads.values() and heads["body"] != heads["head"]:
        raise ValueError(f"{where}: arch.body.block.n_head = {heads['body']} and arch.head.block.n_head = "
                         f"{heads['head']} differ; rq_jax uses one head count for both transformers.")
    num_heads = heads["body"] or heads["head"]
    return None if num_heads is None else int(num_heads)


def _check_yaml_against_model(model: ml_collections.ConfigDict, shapes: Mapping[str, tuple[int, ...]],
                              yaml_cfg: Mapping[str, Any] | None, where: str) -> None:
    """Raises where a yaml value (sizes, layer counts, the condition) contradicts the model the shapes give."""
    arch = yaml_value(yaml_cfg, "arch", {}) or {}
    h, w, depth = model.code_shape
    if (h * w, depth) != (shapes["pos_emb_hw"][-2], shapes["pos_emb_d"][-2]):
        raise disagreement(where, "arch.block_size", yaml_value(arch, "block_size"), "positions x depth",
                           (shapes["pos_emb_hw"][-2], shapes["pos_emb_d"][-2]), "pos_emb_hw / pos_emb_d")
    for field, key, tensor in _RQT_YAML:
        value = yaml_value(yaml_cfg, key)
        if value is not None and comparable(value) != model[field]:
            raise disagreement(where, key, value, field, model[field], tensor)
    if yaml_cfg is not None and ("vocab_size_cond" in arch or "block_size_cond" in arch):
        want = _cond_of(int(arch.get("block_size_cond", 0)), int(arch.get("vocab_size_cond", 0)))
        got = {k: model[k] for k in want}
        if want != got:
            raise disagreement(where, "arch.vocab_size_cond / block_size_cond",
                               (arch.get("vocab_size_cond"), arch.get("block_size_cond")), "the condition", got,
                               "cond_emb.weight / pos_emb_cond")
    if model.cond == "text":
        for key, field in (("dataset.context_length", "text_len"), ("dataset.vocab_size_txt", "text_vocab_size")):
            value = yaml_value(yaml_cfg, key)
            if value is not None and int(value) != model[field]:
                raise disagreement(where, key, value, field, model[field], "pos_emb_cond / cond_emb.weight")


def _model_from_official(shapes: Mapping[str, tuple[int, ...]], yaml_cfg: Mapping[str, Any] | None,
                         where: str) -> ml_collections.ConfigDict:
    """The RQ-Transformer model config the shapes give, checked against the yaml, with the yaml's dropout rates."""
    arch = yaml_value(yaml_cfg, "arch", {}) or {}
    num_heads = _supported_num_heads(arch, yaml_cfg, where)
    block_size = yaml_value(arch, "block_size")
    model = tf_convert.model_config_from_official(
        shapes, num_heads=num_heads, code_shape=None if block_size is None else tuple(int(s) for s in block_size),
    )
    _check_yaml_against_model(model, shapes, yaml_cfg, where)
    if yaml_cfg is not None:
        model.dropout = float(yaml_value(arch, "body.block.resid_pdrop", 0.1))
        model.attn_dropout = float(yaml_value(arch, "body.block.attn_pdrop", 0.0))
        model.embd_dropout = float(yaml_value(arch, "embd_pdrop", 0.0))
    return model


def _check_matches_stage1(model: ml_collections.ConfigDict, stage1_config: ml_collections.ConfigDict,
                          where: str) -> None:
    m1 = stage1_config.model
    have = (int(m1.codebook_size), int(m1.embed_dim), tuple(m1.code_shape))
    want = (int(model.vocab_size), int(model.embed_dim), tuple(model.code_shape))
    if have != want:
        raise ValueError(
            f"{where} models K={want[0]} codes of n_z={want[1]} in a {want[2]} code map, but its stage-1 RQ-VAE "
            f"has K={have[0]}, n_z={have[1]}, code shape {have[2]}: pass the matching stage-1 checkpoint (--stage1)."
        )


def _set_training_and_sampling(c: ml_collections.ConfigDict, yaml_cfg: Mapping[str, Any]) -> None:
    """The official training recipe and sampling settings of the yaml, into the run config `c`."""
    max_gn = yaml_value(yaml_cfg, "optimizer.max_gn", MISSING)
    if max_gn is not MISSING:
        c.train.grad_clip = float(max_gn or 0.0)
    loss_type = yaml_value(yaml_cfg, "loss.type")
    if loss_type is not None:
        c.soft.soft_labels = loss_type == "soft_target_cross_entropy"
    set_recipe(c, yaml_cfg, _RQT_RECIPE)
    sampling = yaml_value(yaml_cfg, "sampling") or yaml_value(yaml_cfg, "experiment.sample") or {}
    sample = c.sample.to_dict()
    if "top_k" in sampling:
        sample["top_k"] = _sample_value(sampling["top_k"], 0, int)
    if "top_p" in sampling:
        sample["top_p"] = _sample_value(sampling["top_p"], 1.0, float)
    for key in ("temp", "temperature"):
        if key in sampling:
            sample["temperature"] = _sample_value(sampling[key], 1.0, float)
    c.sample = ml_collections.ConfigDict(sample)


def stage2_config_from_official(
    shapes: Mapping[str, tuple[int, ...]],
    yaml_cfg: Mapping[str, Any] | None,
    stage1_config: ml_collections.ConfigDict,
    where: str = "the stage-2 checkpoint",
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The rq_jax stage-2 run config of an official RQ-Transformer over `stage1_config`, and notes.

    The yaml is cross-checked with the shapes (`model_config_from_official`) and with the stage-1 model.
    """
    from rq_jax.config_lib import transformer_config

    notes: list[str] = []
    if yaml_cfg is None:
        notes.append(f"note: {where} has no config.yaml: the RQ-Transformer config was inferred from the tensor "
                     "shapes (num_heads = d_model / 64 and square code maps assumed; dropout rates, the training "
                     "recipe and the sampling settings are rq_jax defaults)")
    model = _model_from_official(shapes, yaml_cfg, where)
    _check_matches_stage1(model, stage1_config, where)
    c = transformer_config(stage1_config)
    for key in model.keys():
        if key not in ("vocab_size", "embed_dim", "code_shape"):  # references to the stage-1 model's fields
            c.model[key] = model[key]
    if yaml_cfg is not None:
        _set_training_and_sampling(c, yaml_cfg)
    return c, notes
