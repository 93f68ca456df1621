"""`python -m rq_jax.convert lpips`: torchvision VGG16 + lpips linear layers -> an LPIPS `.npz` checkpoint.

Inputs are the two public PyTorch files LPIPS-VGG is made of:
  * torchvision's ImageNet VGG16 state dict (`vgg16-397923af.pth`): the 13 convolutions
    `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight` (out, in, 3, 3) and `.bias` (out,);
  * the lpips package's learned layers (`lpips/weights/v0.1/vgg.pth`, also taming's `vgg.pth`):
    `lin{0..4}.model.1.weight` (1, C, 1, 1) (`lin{k}.model.0.weight` without the dropout layer).
Conv weights become Flax kernels (kh, kw, in, out); every source tensor is either converted or listed
as ignored (the VGG classifier), and a missing or mis-shaped tensor is named in the error.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import numpy as np

from rq_jax.convert import load_torch_state_dict
from rq_jax.models.lpips import LPIPS_CHANNELS, VGG16_CONV_CHANNELS, VGG16_CONV_INDICES, save_lpips

HELP = "LPIPS-VGG16 weights: torchvision vgg16 .pth + lpips vgg.pth -> .npz"


def _take(state: Mapping[str, np.ndarray], names: tuple[str, ...], shape: tuple[int, ...], source: str,
          errors: list[str]) -> tuple[str, np.ndarray] | None:
    """The first of `names` present in `state`, checked against `shape`; problems go to `errors`."""
    for name in names:
        if name in state:
            if tuple(state[name].shape) != shape:
                errors.append(f"{source}: {name} has shape {tuple(state[name].shape)}, expected {shape}")
                return None
            return name, state[name]
    errors.append(f"{source}: missing tensor {' or '.join(names)} {shape}")
    return None


def convert_lpips_state_dicts(
    vgg_state: Mapping[str, np.ndarray],
    lin_state: Mapping[str, np.ndarray],
    *,
    vgg_source: str = "VGG16 state dict",
    lin_source: str = "lpips linear-layer state dict",
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Maps the two PyTorch state dicts (as numpy) to LPIPS checkpoint arrays, plus a report line per tensor.

    Raises ValueError listing every missing or mis-shaped tensor.
    """
    arrays: dict[str, np.ndarray] = {}
    report: list[str] = []
    errors: list[str] = []
    used: dict[str, set[str]] = {vgg_source: set(), lin_source: set()}

    def add(source: str, found: tuple[str, np.ndarray] | None, dest: str, value_fn) -> None:
        if found is not None:
            name, value = found
            arrays[dest] = np.ascontiguousarray(value_fn(value), dtype=np.float32)
            used[source].add(name)
            report.append(f"{name} {tuple(value.shape)} -> {dest} {arrays[dest].shape}")

    c_in = 3
    for idx, c_out in zip(VGG16_CONV_INDICES, VGG16_CONV_CHANNELS, strict=True):
        found = _take(vgg_state, (f"features.{idx}.weight",), (c_out, c_in, 3, 3), vgg_source, errors)
        add(vgg_source, found, f"features.{idx}.kernel", lambda w: w.transpose(2, 3, 1, 0))
        found = _take(vgg_state, (f"features.{idx}.bias",), (c_out,), vgg_source, errors)
        add(vgg_source, found, f"features.{idx}.bias", lambda b: b)
        c_in = c_out
    for k, c in enumerate(LPIPS_CHANNELS):
        names = (f"lin{k}.model.1.weight", f"lin{k}.model.0.weight")
        found = _take(lin_state, names, (1, c, 1, 1), lin_source, errors)
        add(lin_source, found, f"lin{k}.kernel", lambda w: w.transpose(2, 3, 1, 0))
    if errors:
        raise ValueError("Cannot convert the LPIPS weights: " + "; ".join(errors) + ".")
    for source, state in ((vgg_source, vgg_state), (lin_source, lin_state)):
        for name in state:
            if name not in used[source]:
                report.append(f"ignored {name} {tuple(state[name].shape)} from {source} (not part of LPIPS)")
    return arrays, report


def convert_lpips(vgg_path: str | os.PathLike, lin_path: str | os.PathLike, out_path: str | os.PathLike
                  ) -> list[str]:
    """Converts the two PyTorch files into the `.npz` checkpoint at `out_path`; returns the report."""
    arrays, report = convert_lpips_state_dicts(
        load_torch_state_dict(vgg_path), load_torch_state_dict(lin_path),
        vgg_source=os.fspath(vgg_path), lin_source=os.fspath(lin_path),
    )
    out_dir = os.path.dirname(os.fspath(out_path))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    save_lpips(out_path, arrays)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `lpips` subcommand's flags."""
    parser.add_argument("--vgg", required=True, help="torchvision VGG16 state dict, e.g. vgg16-397923af.pth")
    parser.add_argument("--lin", required=True, help="the lpips package's linear layers, e.g. vgg.pth")
    parser.add_argument("--out", required=True, help="output checkpoint (.npz) for rq_jax.models.lpips.load_lpips")


def run(args: argparse.Namespace) -> None:
    """Runs the conversion and prints what happened to every source tensor."""
    report = convert_lpips(args.vgg, args.lin, args.out)
    for line in report:
        print(line)
    n_ignored = sum(line.startswith("ignored") for line in report)
    print(f"wrote {args.out}: {len(report) - n_ignored} tensors converted, {n_ignored} ignored")
