"""FLOPs and matmul traffic of a traced program, counted on its jaxpr with loops times their trip counts.

Why not the compiler's `cost_analysis()`: XLA counts a while loop's body once, whatever its trip count
(checked on TPU and CPU: a 10-step `fori_loop` of one matmul reports the FLOPs of one). A stage-2 step
scans its layers and microbatches and the sampler loops over T positions x D depths, so those figures
are off by 10-1000x. Here every `scan` counts `length` times, a `shard_map` body once per shard, a
`pallas_call` kernel once per grid step, and `cond` its costliest branch.

FLOPs: 2 x multiply-adds of `dot_general` and convolutions (what the MXU does; elementwise work is
not counted). With remat, the recomputed forward appears in the jaxpr and is counted (hardware FLOPs).
Bytes: every matmul reads its operands and writes its result once (`pallas_call`: its inputs and
outputs), an estimate of the HBM traffic that ignores elementwise-only passes and what stays on chip.
Both are for the whole (global) program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from jax.extend import core


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0
    unknown_loops: int = 0  # while loops of unknown trip count, counted once (the figures are lower bounds)

    def add(self, other: Cost, times: float = 1.0) -> None:
        self.flops += times * other.flops
        self.bytes += times * other.bytes
        self.unknown_loops += other.unknown_loops


def _nbytes(aval: Any) -> float:
    shape = getattr(aval, "shape", None)
    if shape is None:
        return 0.0
    return float(math.prod(shape)) * np.dtype(aval.dtype).itemsize


def _dot_flops(eqn: Any) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    out = eqn.outvars[0].aval
    return 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


def _conv_flops(eqn: Any) -> float:
    rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    out_feature_dim = dn.rhs_spec[0]
    # Each output element: kernel spatial x input features per group multiply-adds; a dilated input (the
    # gradient of a strided convolution) has zeros between its rows, which the hardware skips.
    per_output = math.prod(rhs.shape) / rhs.shape[out_feature_dim]
    return 2.0 * math.prod(out.shape) * per_output / math.prod(eqn.params.get("lhs_dilation") or (1,))


def _io_bytes(eqn: Any) -> float:
    return sum(_nbytes(v.aval) for v in eqn.invars) + sum(_nbytes(v.aval) for v in eqn.outvars)


def _sub_jaxprs(params: dict) -> list:
    out = []
    for v in params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, core.ClosedJaxpr):
                out.append(x.jaxpr)
            elif isinstance(x, core.Jaxpr):
                out.append(x)
    return out


def jaxpr_cost(jaxpr: Any) -> Cost:
    """The Cost of one evaluation of `jaxpr` (a Jaxpr or ClosedJaxpr)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = Cost()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total.add(Cost(_dot_flops(eqn), _io_bytes(eqn)))
        elif name == "conv_general_dilated":
            total.add(Cost(_conv_flops(eqn), _io_bytes(eqn)))
        elif name == "scan":
            total.add(jaxpr_cost(eqn.params["jaxpr"]), eqn.params["length"])
        elif name == "while":
            body = jaxpr_cost(eqn.params["body_jaxpr"])  # fori_loops of static bounds are scans
            body.unknown_loops += 1
            total.add(body)
        elif name == "cond":
            branches = [jaxpr_cost(b) for b in eqn.params["branches"]]
            total.add(max(branches, key=lambda c: c.flops))
        elif name == "shard_map":
            mesh, axes = eqn.params["mesh"], eqn.params.get("newly_manual_axes", ())
            shards = math.prod(dict(mesh.shape)[a] for a in axes)
            total.add(jaxpr_cost(eqn.params["jaxpr"]), shards)
        elif name == "pallas_call":
            inner = jaxpr_cost(eqn.params["jaxpr"])
            grid = eqn.params["grid_mapping"].grid
            steps = math.prod(int(g) for g in grid) if grid else 1
            total.add(Cost(inner.flops * steps, _io_bytes(eqn), inner.unknown_loops))
        else:
            for sub in _sub_jaxprs(eqn.params):
                total.add(jaxpr_cost(sub))
    return total
