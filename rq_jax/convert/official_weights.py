"""Official state dicts -> the state trees the rq_jax trainers save (`gen` + `codebook`, or `params`).

Tensor names and layouts are mapped by `rq_jax.convert.rqvae` and `rq_jax.convert.rq_transformer`; this
module builds the abstract model, fills it, casts to the model's dtypes, and reports what happened to
every source tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from rq_jax.convert import rq_transformer as tf_convert
from rq_jax.convert import rqvae as vae_convert
from rq_jax.convert.official_yaml import STAGE1, STAGE2
from rq_jax.models.abstract import abstract_module


@dataclasses.dataclass
class ConvertedStage:
    """One converted run: its config, the state tree the trainer would save, and report lines."""

    stage: str
    config: ml_collections.ConfigDict
    state: dict[str, Any]
    report: list[str]


def layout_from_official(stage: str, path: tuple[Any, ...], array: np.ndarray) -> np.ndarray:
    """The rq_jax layout of the official tensor of the parameter at `path` (the converters' own functions).

    Stage 1: conv weights (out, in, kh, kw) -> kernels (kh, kw, in, out). Stage 2: linear weights (out, in) ->
    kernels (in, out), positional embeddings (1, L, C) -> (L, C). Everything else is unchanged.
    """
    if stage == STAGE1:
        return vae_convert.from_torch_layout(array)
    return tf_convert.from_official_layout(path, array)


def _layout_note(src: tuple[int, ...], dst: tuple[int, ...], path: tuple[Any, ...]) -> str:
    leaf = str(path[-1])
    if len(src) == 4:
        return "conv OIHW -> HWIO"
    if leaf == "kernel" and len(src) == 2:
        return "linear (out, in) -> (in, out)"
    if len(src) == len(dst) + 1:
        return "leading 1 dropped"
    return "copied"


def _cast_flat(flat: list[tuple[tuple[Any, ...], Any]], abstract: dict) -> list[tuple[tuple[Any, ...], Any]]:
    out = []
    for path, value in flat:
        target = abstract[path].get_value()
        if isinstance(value, tuple):  # CodebookState
            value = type(value)(*(np.asarray(v, t.dtype) for v, t in zip(value, target, strict=True)))
        else:
            value = np.asarray(value, target.dtype)
        out.append((path, value))
    return out


def convert_stage1(state_dict: Mapping[str, np.ndarray], config: ml_collections.ConfigDict) -> ConvertedStage:
    """The stage-1 trainer state (`gen` params + `codebook`) of an official RQ-VAE state dict, as numpy.

    Nothing is materialised beyond layout views of the inputs, so zero-stride (`np.broadcast_to`) stand-ins
    give a shape-only pass over full-size models.
    """
    from rq_jax.models.rqvae import RQVAE, CodebookVar

    model = abstract_module(lambda rngs: RQVAE(config.model, rngs=rngs))
    abstract = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    abstract.update(nnx.to_flat_state(nnx.state(model, CodebookVar)))
    state, unused = vae_convert.rqvae_state_from_official(state_dict, model)
    nnx.update(model, nnx.from_flat_state(_cast_flat(nnx.to_flat_state(state), abstract)))
    _, gen, codebook = nnx.split(model, nnx.Param, CodebookVar)
    report = _stage1_report(state_dict, model, int(config.model.codebook_size), unused)
    return ConvertedStage(STAGE1, config, {"step": np.int32(0), "gen": gen, "codebook": codebook}, report)


def _stage1_report(state_dict: Mapping[str, np.ndarray], model: Any, k: int, unused: list[str]) -> list[str]:
    """A line per official tensor of an RQ-VAE: where it went, in which layout, or why it was not used."""
    report = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = vae_convert.official_name(path)
        src, dst = tuple(state_dict[name].shape), tuple(var.get_value().shape)
        report.append(f"stage1  {name} {src} -> gen/{'/'.join(map(str, path))} {dst}  "
                      f"{_layout_note(src, dst, path)}")
    pad = np.asarray(state_dict["quantizer.codebooks.0.weight"][k:])
    pad_note = "its zero padding row dropped" if not np.any(pad) else "WARNING: its padding row is not zero; dropped"
    targets = {"weight": "embedding_KxC", "cluster_size_ema": "cluster_size_K", "embed_ema": "embed_sum_KxC"}
    for d in range(model.depth):
        for key, field in targets.items():
            name = f"quantizer.codebooks.{d}.{key}"
            shape = tuple(state_dict[name].shape)
            if d == 0:
                dst = tuple(getattr(model.codebook_state, field).shape)
                extra = f"  {pad_note}" if key == "weight" else ""
                report.append(f"stage1  {name} {shape} -> codebook/{field} {dst}{extra}")
            else:
                report.append(f"stage1  {name} {shape} -> alias of quantizer.codebooks.0.{key} (shared codebook, "
                              "checked equal)")
    report += [f"stage1  ignored: {n} {tuple(state_dict[n].shape)}: not a parameter of the rq_jax RQ-VAE"
               for n in unused]
    return report


def convert_stage2(state_dict: Mapping[str, np.ndarray], config: ml_collections.ConfigDict) -> ConvertedStage:
    """The stage-2 trainer state (`params`) of an official RQ-Transformer state dict, as numpy (see convert_stage1)."""
    from rq_jax.models.rq_transformer import RQTransformer

    model = abstract_module(lambda rngs: RQTransformer(config.model, rngs=rngs))
    abstract = dict(nnx.to_flat_state(nnx.state(model)))
    state, unused = tf_convert.rq_transformer_state_from_official(state_dict, model)
    nnx.update(model, nnx.from_flat_state(_cast_flat(nnx.to_flat_state(state), abstract)))
    report = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = tf_convert.official_name(path)
        src, dst = tuple(state_dict[name].shape), tuple(var.get_value().shape)
        report.append(f"stage2  {name} {src} -> params/{'/'.join(map(str, path))} {dst}  "
                      f"{_layout_note(src, dst, path)}")
    report += [f"stage2  ignored: {n} {tuple(state_dict[n].shape)}: not a parameter of the rq_jax RQ-Transformer"
               for n in unused]
    return ConvertedStage(STAGE2, config, {"step": np.int32(0), "params": nnx.state(model)}, report)
