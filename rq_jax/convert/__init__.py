"""Converters from public PyTorch weight files to rq_jax's Flax checkpoints: `python -m rq_jax.convert`.

PyTorch is needed only here and is imported lazily (`pip install rq_jax[convert]`).
"""

from __future__ import annotations

import os

import numpy as np

TORCH_MISSING = "Converting PyTorch weights needs PyTorch; install it with `pip install rq_jax[convert]`."


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state-dict file (a mapping of tensors) into float32/int numpy arrays on the CPU."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(TORCH_MISSING) from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch weights file {os.fspath(path)!r} not found.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict of tensors.")
    out = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{os.fspath(path)!r}: entry {name!r} is a {type(tensor).__name__}, not a tensor.")
        tensor = tensor.detach().cpu()
        out[name] = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    return out
