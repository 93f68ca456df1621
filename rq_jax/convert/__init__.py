"""Converters from public PyTorch weight files to rq_jax's Flax checkpoints: `python -m rq_jax.convert`.

PyTorch is needed only here and is imported lazily (`pip install rq_jax[convert]`).
"""

from __future__ import annotations

import os
import tarfile

import numpy as np

TORCH_MISSING = "Converting PyTorch weights needs PyTorch; install it with `pip install rq_jax[convert]`."


def looks_like_torch_file(path: str | os.PathLike) -> bool:
    """Whether the file has the header of a `torch.save` file: a zip archive, a pickle (legacy format) or a tar.

    Lets a corrupt or wrong file be named as such instead of failing deep inside `torch.load`.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        return True
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode, protocol 2-5
        return True
    return tarfile.is_tarfile(path)


def not_a_torch_file(path: str | os.PathLike) -> ValueError:
    """The error for a file that `looks_like_torch_file` rejects."""
    what = "an empty file" if os.path.getsize(path) == 0 else "no zip or pickle header"
    return ValueError(f"{os.fspath(path)} is not a PyTorch checkpoint ({what}; a corrupt or wrong file?).")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state-dict file (a mapping of tensors) into float32/int numpy arrays on the CPU."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch weights file {os.fspath(path)!r} not found.")
    try:
        import torch
    except ImportError as e:
        raise ImportError(TORCH_MISSING) from e
    if not looks_like_torch_file(path):
        raise not_a_torch_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader error becomes one sentence naming the file
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{os.fspath(path)!r} is not a state dict that a safe torch.load can read "
                         f"({type(e).__name__}: {first}).") from e
    if not isinstance(state, dict):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict of tensors.")
    out = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{os.fspath(path)!r}: entry {name!r} is a {type(tensor).__name__}, not a tensor.")
        tensor = tensor.detach().cpu()
        out[name] = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    return out
