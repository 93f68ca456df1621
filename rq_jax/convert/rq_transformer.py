"""Official PyTorch RQ-Transformer `state_dict` <-> rq_jax `RQTransformer` (Flax NNX) parameters.

The NNX module mirrors the official module tree, so names map by walking parameter paths:

    ('body_transformer', 'blocks', 3, 'attn', 'query', 'kernel')  <->  body_transformer.blocks.3.attn.query.weight
    ('head_transformer', 'blocks', 0, 'mlp', 'fc1', 'bias')       <->  head_transformer.blocks.0.mlp.0.bias
    ('cond_emb', 'embedding')                                      <->  cond_emb.weight
    ('pos_emb_hw',)                                                <->  pos_emb_hw

Leaves: `kernel`/`scale`/`embedding` <-> `weight`, `bias` <-> `bias`; the MLP's `fc1`/`fc2` are the official
`mlp.0`/`mlp.2` (`mlp.1` is the parameter-free GELU). Layouts: linear weights (out, in) <-> kernels (in, out);
positional embeddings (1, L, C) <-> (L, C); the rest is copied.

The official stage-2 state dict holds no code embedding (the frozen RQ-VAE codebook is passed to the model
at call time), and every released config shares one classifier over depths (`classifier.linear` is a plain
Linear) with no logit mask. `cond_classifier` (text models only) predicts the next text token.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rq_jax.models.rq_transformer import RQTransformer, rq_transformer_model_config

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_MODULE_NAMES = {"fc1": "0", "fc2": "2"}
_POS_EMB = ("pos_emb_cond", "pos_emb_hw", "pos_emb_d")
_BLOCK_RE = re.compile(r"^(body|head)_transformer\.blocks\.(\d+)\.")
HEAD_DIM = 64  # every released model has 64-dim attention heads; num_heads is not visible in a state dict


def official_name(path: tuple[Any, ...]) -> str:
    """The official state_dict name of an NNX parameter path of `RQTransformer`."""
    parts = [str(p) for p in path]
    if len(parts) == 1 and parts[0] in _POS_EMB:
        return parts[0]
    *modules, leaf = parts
    if leaf not in _LEAF_NAMES:
        raise ValueError(f"No official name for parameter path {path}: unknown leaf {leaf!r}.")
    return ".".join([*(_MODULE_NAMES.get(m, m) for m in modules), _LEAF_NAMES[leaf]])


def from_official_layout(path: tuple[Any, ...], arr: np.ndarray) -> np.ndarray:
    """An official tensor in the layout of the parameter at `path`: linear (out, in) -> (in, out), (1, L, C)
    positional embeddings -> (L, C)."""
    leaf = str(path[-1])
    if leaf == "kernel" and arr.ndim == 2:
        return arr.T
    if leaf in _POS_EMB and arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0]
    return arr


def _to_official(path: tuple[Any, ...], arr: np.ndarray) -> np.ndarray:
    leaf = str(path[-1])
    if leaf == "kernel":
        return arr.T
    if leaf in _POS_EMB:
        return arr[None]
    return arr


def rq_transformer_state_from_official(
    state_dict: Mapping[str, np.ndarray], model: RQTransformer
) -> tuple[nnx.State, list[str]]:
    """Converted numpy values for every parameter of `model`, plus the sorted unused source names.

    `model` may be abstract (`nnx.eval_shape`): only its structure and shapes are read. Raises a KeyError
    naming the missing tensor and the model parameter, and a ValueError naming the tensor and both shapes
    on a shape mismatch.
    """
    used: set[str] = set()
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = official_name(path)
        if name not in state_dict:
            raise KeyError(
                f"The state dict has no tensor {name!r} for the model parameter {'/'.join(map(str, path))}."
            )
        src = np.asarray(state_dict[name])
        arr = from_official_layout(path, src)
        want = tuple(var.get_value().shape)
        if arr.shape != want:
            raise ValueError(
                f"{name}: official shape {src.shape} (as {arr.shape} after layout conversion) does not fit the "
                f"model's {'/'.join(map(str, path))} of shape {want}."
            )
        flat.append((path, arr))
        used.add(name)
    return nnx.from_flat_state(flat), sorted(set(state_dict) - used)


def rq_transformer_params_from_official(state_dict: Mapping[str, np.ndarray], model: RQTransformer) -> list[str]:
    """Loads an official RQ-Transformer state dict into `model` in place; returns the unused source names.

    Values are cast to the dtypes of the model's parameters. See `rq_transformer_state_from_official`.
    """
    state, unused = rq_transformer_state_from_official(state_dict, model)
    current = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    cast = [(p, jnp.asarray(v, current[p].get_value().dtype)) for p, v in nnx.to_flat_state(state)]
    nnx.update(model, nnx.from_flat_state(cast))
    return unused


def rq_transformer_params_to_official(model: RQTransformer) -> dict[str, np.ndarray]:
    """The official state dict (float32 numpy, PyTorch layouts) of `model`: the inverse mapping."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var.get_value(), np.float32)
        out[official_name(path)] = np.ascontiguousarray(_to_official(path, value))
    return out


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in state_dict.items()}


def model_config_from_official(
    state_dict: Mapping[str, Any], *, num_heads: int | None = None, code_shape: tuple[int, int, int] | None = None,
    **overrides: Any,
) -> ml_collections.ConfigDict:
    """The `rq_transformer_model_config` that an official state dict (arrays, or name -> shape) fits.

    Read from the shapes: d_model, embed_dim (n_z), vocab_size K, layer counts, mlp_ratio, D, T and the
    conditioning: text when `pos_emb_cond` has more than one position (text_len = that, text_vocab_size =
    rows of `cond_emb`), else unconditional when `cond_emb` has one row, else class (num_classes = rows).
    Not visible in shapes: `num_heads` (default d_model // 64, true of every released model) and the
    (H, W) split of T (default square). Dropout rates keep the official defaults; `overrides` set the rest.
    """
    shapes = _shapes(state_dict)

    def get(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise KeyError(f"The state dict has no tensor {name!r}; is it an official RQ-Transformer state dict?")
        return shapes[name]

    num_pos, d_model = get("pos_emb_hw")[-2:]
    depth = get("pos_emb_d")[-2]
    cond_len = get("pos_emb_cond")[-2]
    cond_rows = get("cond_emb.weight")[0]
    layers = {"body": set(), "head": set()}
    for name in shapes:
        m = _BLOCK_RE.match(name)
        if m:
            layers[m.group(1)].add(int(m.group(2)))
    if code_shape is None:
        side = math.isqrt(num_pos)
        if side * side != num_pos:
            raise ValueError(f"pos_emb_hw has {num_pos} positions, not a square: pass code_shape=(H, W, D).")
        code_shape = (side, side, depth)
    if num_heads is None:
        if d_model % HEAD_DIM:
            raise ValueError(f"d_model {d_model} is not a multiple of {HEAD_DIM}: pass num_heads.")
        num_heads = d_model // HEAD_DIM
    cond_fields: dict[str, Any]
    if cond_len > 1:
        cond_fields = dict(cond="text", text_len=cond_len, text_vocab_size=cond_rows)
    elif cond_rows == 1:
        cond_fields = dict(cond="none")
    else:
        cond_fields = dict(cond="class", num_classes=cond_rows)
    fields = dict(
        vocab_size=get("classifier.linear.weight")[0],
        code_shape=tuple(code_shape),
        embed_dim=get("input_mlp.weight")[1],
        d_model=d_model,
        num_heads=num_heads,
        spatial_layers=len(layers["body"]),
        depth_layers=len(layers["head"]),
        mlp_ratio=get("body_transformer.blocks.0.mlp.0.weight")[0] // d_model,
        **cond_fields,
    )
    fields.update(overrides)
    return rq_transformer_model_config(**{k: v if isinstance(v, str | tuple | bool | float) else int(v)
                                          for k, v in fields.items()})
