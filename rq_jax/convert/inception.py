"""`python -m rq_jax.convert inception`: pytorch-fid's FID Inception-v3 weights -> an Inception `.npz` checkpoint.

Input: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (TensorFlow's 2015-12-05 Inception graph
ported to torchvision's `Inception3` layout, num_classes=1008, no auxiliary classifier). For every
conv unit `{unit}` (e.g. `Conv2d_1a_3x3`, `Mixed_6b.branch7x7_2`):
  `{unit}.conv.weight` (out, in, kh, kw)         -> `{unit}.conv.kernel` (kh, kw, in, out)
  `{unit}.bn.weight / bias / running_mean / running_var` (out,) -> `{unit}.bn.scale / bias / mean / var`
and `fc.weight` (1008, 2048) -> `fc.kernel` (2048, 1008), `fc.bias` (1008,). Every source tensor is
either converted or listed as ignored (`num_batches_tracked`, an auxiliary classifier if present), and
a missing or mis-shaped tensor is named in the error.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import numpy as np

from rq_jax.convert import load_torch_state_dict
from rq_jax.models.inception import FID_WEIGHTS_FILE, NUM_LOGITS, POOL_FEATURES, all_conv_units, save_inception

HELP = f"FID Inception-v3 weights: pytorch-fid's {FID_WEIGHTS_FILE} -> .npz"

# torch BatchNorm2d entry -> checkpoint suffix
_BN = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))


def convert_inception_state_dict(
    state: Mapping[str, np.ndarray], *, source: str = "Inception state dict"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Maps pytorch-fid's Inception state dict (as numpy) to checkpoint arrays, plus a report line per tensor.

    Raises ValueError listing every missing or mis-shaped tensor.
    """
    arrays: dict[str, np.ndarray] = {}
    report: list[str] = []
    errors: list[str] = []
    used: set[str] = set()

    def take(name: str, shape: tuple[int, ...], dest: str, value_fn=lambda v: v) -> None:
        if name not in state:
            errors.append(f"missing tensor {name} {shape}")
            return
        value = state[name]
        if tuple(value.shape) != shape:
            errors.append(f"{name} has shape {tuple(value.shape)}, expected {shape}")
            return
        arrays[dest] = np.ascontiguousarray(value_fn(np.asarray(value)), dtype=np.float32)
        used.add(name)
        report.append(f"{name} {tuple(value.shape)} -> {dest} {arrays[dest].shape}")

    for unit, spec in all_conv_units():
        kh, kw = spec.kernel
        take(f"{unit}.conv.weight", (spec.cout, spec.cin, kh, kw), f"{unit}.conv.kernel",
             lambda w: w.transpose(2, 3, 1, 0))
        for torch_name, ours in _BN:
            take(f"{unit}.bn.{torch_name}", (spec.cout,), f"{unit}.bn.{ours}")
    take("fc.weight", (NUM_LOGITS, POOL_FEATURES), "fc.kernel", lambda w: w.T)
    take("fc.bias", (NUM_LOGITS,), "fc.bias")
    if errors:
        shown = errors[:20] + ([f"... {len(errors) - 20} more"] if len(errors) > 20 else [])
        raise ValueError(f"Cannot convert the Inception weights in {source}: " + "; ".join(shown) + ".")
    for name, value in state.items():
        if name not in used:
            why = "BatchNorm step counter" if name.endswith("num_batches_tracked") else "not part of the FID network"
            report.append(f"ignored {name} {tuple(np.shape(value))} ({why})")
    return arrays, report


def convert_inception(pth_path: str | os.PathLike, out_path: str | os.PathLike) -> list[str]:
    """Converts pytorch-fid's `.pth` into the `.npz` checkpoint at `out_path`; returns the report."""
    arrays, report = convert_inception_state_dict(load_torch_state_dict(pth_path), source=os.fspath(pth_path))
    save_inception(out_path, arrays)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `inception` subcommand's flags."""
    parser.add_argument("--pth", required=True, help=f"pytorch-fid's FID Inception weights, {FID_WEIGHTS_FILE}")
    parser.add_argument("--out", required=True, help="output checkpoint (.npz) for load_inception")


def run(args: argparse.Namespace) -> None:
    """Runs the conversion and prints what happened to every source tensor."""
    report = convert_inception(args.pth, args.out)
    for line in report:
        print(line)
    n_ignored = sum(line.startswith("ignored") for line in report)
    print(f"wrote {args.out}: {len(report) - n_ignored} tensors converted, {n_ignored} ignored")
