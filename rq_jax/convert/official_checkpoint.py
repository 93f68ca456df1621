"""Reading an official checkpoint: finding its `.pt` file, loading it safely, and its config.yaml.

PyTorch and PyYAML are imported only when a file is read, after the path has been checked, so a wrong path
is reported as such even where they are not installed. `torch.load` runs with `weights_only=True` unless
the caller allows pickle (`--allow_pickle`), and a file that is no PyTorch checkpoint at all is named as
such rather than answered with that flag.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from rq_jax.convert import looks_like_torch_file, not_a_torch_file
from rq_jax.convert.official_yaml import read_yaml

OFFICIAL_REPO = "https://github.com/kakaobrain/rq-vae-transformer"
TORCH_MISSING = ("Converting official checkpoints needs PyTorch: install it with `pip install torch` "
                 "(or `pip install -e .[convert]`).")
_GIVE_A_CHECKPOINT = "give the folder of an official checkpoint (model.pt and config.yaml) or the .pt file itself."


@dataclasses.dataclass
class OfficialCheckpoint:
    """An official `model.pt` read into numpy, with its `config.yaml` (None when absent)."""

    path: str
    state_dict: dict[str, np.ndarray]
    yaml: dict[str, Any] | None
    yaml_path: str | None
    notes: list[str]  # report lines about entries of the file that are not the weights

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict.items()}


def import_torch() -> Any:
    """The torch module, or an ImportError saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(TORCH_MISSING) from e
    return torch


def checkpoint_file(path: str | os.PathLike) -> str:
    """The `.pt` file of an official checkpoint given as that file or as its folder (FileNotFoundError if none)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        if os.path.isfile(os.path.join(p, "model.pt")):
            return os.path.join(p, "model.pt")
        found = sorted(glob.glob(os.path.join(p, "*.pt")))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(
            f"The folder {p} holds {'no' if not found else 'several'} .pt files and no model.pt: {_GIVE_A_CHECKPOINT}"
        )
    if not os.path.isfile(p):
        raise FileNotFoundError(f"No official checkpoint at {p}: {_GIVE_A_CHECKPOINT}")
    return p


def _load(torch: Any, path: str, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError:  # files in the legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def torch_load(path: str, allow_pickle: bool) -> Any:
    """`torch.load` of `path` on the CPU, refusing pickled Python objects unless `allow_pickle`.

    Every failure is one ValueError naming the file: not a PyTorch checkpoint at all, Python objects that
    need --allow_pickle, or the reader's own error.
    """
    torch = import_torch()
    if not looks_like_torch_file(path):
        raise not_a_torch_file(path)
    try:
        try:
            return _load(torch, path, weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" not in str(e).lower():
                raise
            if not allow_pickle:
                raise ValueError(
                    f"{path} holds Python objects besides tensors, which a safe torch.load refuses; if you trust "
                    "the file (e.g. it comes from the official release), rerun with --allow_pickle."
                ) from e
            return _load(torch, path, weights_only=False)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader error becomes one sentence naming the file
        raise ValueError(f"{path} is not a PyTorch checkpoint that torch.load can read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}).") from e


def _describe(value: Any) -> str:
    if hasattr(value, "shape"):
        return f"tensor {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"{len(value)} entries"
    return type(value).__name__


def _weights_entry(obj: Any, file: str, ema: bool, tensor_type: type) -> tuple[Mapping[str, Any], list[str]]:
    """The file's weights (its `state_dict` / `state_dict_ema` entry, or the file itself) and notes on the rest."""
    key = "state_dict_ema" if ema else "state_dict"
    if isinstance(obj, Mapping) and key in obj:
        weights = obj[key]
        notes = [f"ignored: top-level entry {k!r} of {file} ({_describe(v)}): not the model weights"
                 for k, v in obj.items() if k != key]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, tensor_type) for v in obj.values()) and not ema:
        weights, notes = obj, []
    else:
        entries = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{file} holds neither a dict with a {key!r} entry nor a state dict of tensors "
                         f"(found {entries}).")
    if not isinstance(weights, Mapping):
        raise ValueError(f"{file}: the {key!r} entry is a {type(weights).__name__}, not a state dict of tensors.")
    return weights, notes


def read_official_checkpoint(
    path: str | os.PathLike, *, allow_pickle: bool = False, ema: bool = False
) -> OfficialCheckpoint:
    """Reads an official checkpoint (folder or .pt) and the config.yaml beside it, tensors as float32 numpy.

    The weights are the file's `state_dict` entry (`state_dict_ema` with `ema`), or the file itself when it is
    a plain state dict; its other entries (optimizer, discriminator, ...) are listed in `notes` as ignored.
    """
    file = checkpoint_file(path)
    torch = import_torch()
    weights, notes = _weights_entry(torch_load(file, allow_pickle), file, ema, torch.Tensor)
    names = list(weights)
    strip = len(names) > 0 and all(n.startswith("module.") for n in names)  # saved from a DDP-wrapped model
    state_dict = {}
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{file}: state dict entry {name!r} is a {type(tensor).__name__}, not a tensor.")
        tensor = tensor.detach().cpu()
        array = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        state_dict[name[len("module."):] if strip else name] = array
    if strip:
        notes.append(f"note: the 'module.' prefix of every name in {file} was removed")
    yaml_path = os.path.join(os.path.dirname(file), "config.yaml")
    yaml_cfg = read_yaml(yaml_path) if os.path.isfile(yaml_path) else None
    return OfficialCheckpoint(file, state_dict, yaml_cfg, yaml_path if yaml_cfg is not None else None, notes)
