"""Official PyTorch RQ-VAE `state_dict` <-> rq_jax `RQVAE` (Flax NNX) parameters.

The NNX module mirrors the official module tree, so a parameter at path
`('encoder', 'down', 0, 'block', 1, 'conv1', 'kernel')` is the official `encoder.down.0.block.1.conv1.weight`
(`kernel`/`scale` <-> `weight`, `bias` <-> `bias`). Layouts: conv weights (out, in, kh, kw) <-> kernels
(kh, kw, in, out); GroupNorm weights and biases are copied.

The codebook: the official `quantizer.codebooks.{d}.weight` has K + 1 rows, the last a zero padding row
that the nearest-code search never returns, which is dropped; with a shared codebook (all released
models) `codebooks.1..D-1` alias `codebooks.0` and are checked to be equal. `cluster_size_ema` and
`embed_ema` become the CodebookState's `cluster_size_K` and `embed_sum_KxC`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rq_jax.models.rqvae import RQVAE, CodebookVar
from rq_jax.quantizer import CodebookState

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_CODEBOOK_RE = re.compile(r"^quantizer\.codebooks\.(\d+)\.(weight|cluster_size_ema|embed_ema)$")


def official_name(path: tuple[Any, ...]) -> str:
    """The official state_dict name of an NNX parameter path."""
    *modules, leaf = (str(p) for p in path)
    if leaf not in _LEAF_NAMES:
        raise ValueError(f"No official name for parameter path {path}: unknown leaf {leaf!r}.")
    return ".".join([*modules, _LEAF_NAMES[leaf]])


def from_torch_layout(arr: np.ndarray) -> np.ndarray:
    """A PyTorch conv kernel (O, I, kh, kw) as Flax's (kh, kw, I, O); other arrays unchanged."""
    return np.transpose(arr, (2, 3, 1, 0)) if arr.ndim == 4 else arr


def _to_torch_layout(arr: np.ndarray) -> np.ndarray:
    return np.transpose(arr, (3, 2, 0, 1)) if arr.ndim == 4 else arr


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _codebook_from_official(
    state_dict: Mapping[str, np.ndarray], target: CodebookState, depth: int
) -> tuple[CodebookState, set[str]]:
    found = {}
    for name in state_dict:
        m = _CODEBOOK_RE.match(name)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = name
    if sorted(found) != list(range(depth)):
        raise KeyError(
            f"Expected codebooks quantizer.codebooks.0..{depth - 1} (depth {depth}), "
            f"found indices {sorted(found)} in the state dict."
        )
    fields = {"weight": "embedding_KxC", "cluster_size_ema": "cluster_size_K", "embed_ema": "embed_sum_KxC"}
    ref = {}
    for key in fields:
        if key not in found[0]:
            raise KeyError(f"Missing quantizer.codebooks.0.{key} in the state dict.")
        ref[key] = np.asarray(state_dict[found[0][key]])
    for d in range(1, depth):
        for key in fields:
            name = found[d].get(key)
            if name is None:
                raise KeyError(f"Missing quantizer.codebooks.{d}.{key} in the state dict.")
            if not np.array_equal(np.asarray(state_dict[name]), ref[key]):
                raise ValueError(
                    f"{name} differs from quantizer.codebooks.0.{key}: only shared codebooks "
                    "(shared_codebook: true, all released models) are supported."
                )
    k, c = _shape(target.embedding_KxC)
    weight = ref["weight"]
    if weight.shape != (k + 1, c):
        raise ValueError(
            f"quantizer.codebooks.0.weight has shape {weight.shape}, expected {(k + 1, c)} "
            f"(K={k} codes plus the padding row, embed_dim {c})."
        )
    state = CodebookState(weight[:k], ref["cluster_size_ema"], ref["embed_ema"])
    for key, field in fields.items():
        got, want = _shape(getattr(state, field)), _shape(getattr(target, field))
        if got != want:
            raise ValueError(
                f"quantizer.codebooks.0.{key}: shape {got} does not fit the model's {field} {want}."
            )
    used = {name for per_depth in found.values() for name in per_depth.values()}
    return state, used


def rqvae_state_from_official(
    state_dict: Mapping[str, np.ndarray], model: RQVAE
) -> tuple[nnx.State, list[str]]:
    """Converted numpy values for every parameter and the codebook of `model`, plus the unused names.

    `model` may be abstract (`nnx.eval_shape`): only its structure and shapes are read. Raises a
    KeyError naming a model parameter that has no source tensor, and a ValueError naming the tensor
    and both shapes on a shape mismatch. Returns (state for `nnx.update`, sorted unused source names).
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
        arr = from_torch_layout(src)
        want = _shape(var.get_value())
        if arr.shape != want:
            raise ValueError(
                f"{name}: official shape {src.shape} (as {arr.shape} after layout conversion) does not fit "
                f"the model's {'/'.join(map(str, path))} of shape {want}."
            )
        flat.append((path, arr))
        used.add(name)
    for path, var in nnx.to_flat_state(nnx.state(model, CodebookVar)):
        cb_state, cb_used = _codebook_from_official(state_dict, var.get_value(), model.depth)
        flat.append((path, cb_state))
        used |= cb_used
    return nnx.from_flat_state(flat), sorted(set(state_dict) - used)


def rqvae_params_from_official(state_dict: Mapping[str, np.ndarray], model: RQVAE) -> list[str]:
    """Loads an official RQ-VAE state dict into `model` in place; returns the unused source names.

    Values are cast to the dtypes of the model's variables. See `rqvae_state_from_official` for errors.
    """
    state, unused = rqvae_state_from_official(state_dict, model)
    current = {}
    for kind in (nnx.Param, CodebookVar):
        current.update(nnx.to_flat_state(nnx.state(model, kind)))
    cast = []
    for path, value in nnx.to_flat_state(state):
        target = current[path].get_value()
        if isinstance(value, CodebookState):
            cb = CodebookState(*(jnp.asarray(v, t.dtype) for v, t in zip(value, target, strict=True)))
            cast.append((path, cb))
        else:
            cast.append((path, jnp.asarray(value, target.dtype)))
    nnx.update(model, nnx.from_flat_state(cast))
    return unused


def rqvae_params_to_official(model: RQVAE) -> dict[str, np.ndarray]:
    """The official state dict (float32 numpy, PyTorch layouts) of `model`: the inverse mapping.

    The codebook is written as the official shared codebook: K + 1 rows with a zero padding row, repeated
    under `quantizer.codebooks.0..D-1`.
    """
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var.get_value(), np.float32)
        out[official_name(path)] = np.ascontiguousarray(_to_torch_layout(value))
    cb = CodebookState(*(np.asarray(v, np.float32) for v in model.codebook_state))
    weight = np.concatenate([cb.embedding_KxC, np.zeros((1, cb.embedding_KxC.shape[1]), np.float32)], axis=0)
    for d in range(model.depth):
        out[f"quantizer.codebooks.{d}.weight"] = weight
        out[f"quantizer.codebooks.{d}.cluster_size_ema"] = cb.cluster_size_K
        out[f"quantizer.codebooks.{d}.embed_ema"] = cb.embed_sum_KxC
    return out
