"""One program compiled for a chip: its memory per device against the chip's HBM, and a roofline.

Memory is the compiler's own (`compiled.memory_analysis()`): arguments + outputs - aliased (the donated
state) + temporaries. FLOPs and bytes are counted on the jaxpr (`rq_jax.aot.cost`) and split evenly
over the program's devices. The roofline time is max(FLOPs / peak FLOP/s, bytes / HBM bandwidth): no
step can be faster, so FLOPs / (peak x roofline time) is the best FLOP utilisation the program could
reach (hardware FLOPs: with remat the recomputation counts). Communication is not in the roofline.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any

import jax

from rq_jax.aot.cost import jaxpr_cost
from rq_jax.aot.topology import Chip, GiB


class CompileFailed(RuntimeError):
    """The compiler rejected a program; the message is one sentence (out of memory: how much)."""


@dataclasses.dataclass
class Report:
    program: str
    note: str
    devices: int
    args: float          # bytes per device
    outputs: float
    aliased: float
    temps: float
    code: float
    hbm: float           # the bytes a program may use on the chip (`Chip.usable_bytes`)
    flops: float         # per device per call
    bytes: float         # per device per call (matmul operands and results)
    compute_s: float
    memory_s: float
    compile_s: float
    lower_bound: bool    # a loop of unknown trip count was counted once

    @property
    def total(self) -> float:
        return self.args + self.outputs - self.aliased + self.temps

    @property
    def fits(self) -> bool:
        return self.total <= self.hbm

    @property
    def roofline_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def best_utilisation(self) -> float:
        return self.compute_s / self.roofline_s if self.roofline_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(total=self.total, fits=self.fits, roofline_s=self.roofline_s, bound=self.bound,
                 best_utilisation=self.best_utilisation)
        return d


# libtpu's two out-of-memory phrasings: "Used 20.5G of 15.48G hbm." and "the total memory required for HLO
# temporaries (255.63G) exceeds available HBM (15.75G)".
_OOM = (re.compile(r"Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) hbm", re.I),
        re.compile(r"\(([\d.]+[KMGT]?)\) exceeds available HBM \(([\d.]+[KMGT]?)\)", re.I))


def _compile_error(name: str, error: Exception) -> CompileFailed:
    text = str(error)
    for pattern in _OOM:
        m = pattern.search(text)
        if m:
            return CompileFailed(f"the {name} does not fit: the compiler needs {m.group(1)}B of HBM per device and "
                                 f"{m.group(2)}B are available")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(error).__name__)
    return CompileFailed(f"the {name} does not compile: {first[:300]}")


def analyse(program: Any, chip: Chip, hlo_dir: str | None = None) -> Report:
    """Traces, lowers and compiles `program` (`rq_jax.trainers.programs.Program`) under its mesh; with `hlo_dir`,
    writes the compiled HLO text there as `<program name>.hlo.txt`."""
    t0 = time.perf_counter()
    with jax.set_mesh(program.mesh):
        traced = program.jitted.trace(*program.args)
        cost = jaxpr_cost(traced.jaxpr)
        try:
            compiled = traced.lower().compile()
        except Exception as e:  # noqa: BLE001 - XLA reports every rejection as a runtime error
            raise _compile_error(program.name, e) from e
    if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        with open(os.path.join(hlo_dir, program.name.replace(" ", "_") + ".hlo.txt"), "w") as f:
            f.write(compiled.as_text())
    mem = compiled.memory_analysis()
    n = program.mesh.size
    flops, nbytes = cost.flops / n, cost.bytes / n
    return Report(
        program=program.name, note=program.note, devices=n, args=float(mem.argument_size_in_bytes),
        outputs=float(mem.output_size_in_bytes), aliased=float(getattr(mem, "alias_size_in_bytes", 0)),
        temps=float(mem.temp_size_in_bytes), code=float(mem.generated_code_size_in_bytes), hbm=chip.usable_bytes,
        flops=flops, bytes=nbytes, compute_s=flops / chip.peak_flops, memory_s=nbytes / chip.hbm_bandwidth,
        compile_s=time.perf_counter() - t0, lower_bound=cost.unknown_loops > 0,
    )


def _si(x: float, unit: str) -> str:
    for p, s in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= p:
            return f"{x / p:.3g} {s}{unit}"
    return f"{x:.3g} {unit}"


def _time(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


HEADER = ("program", "memory/device (args + out - aliased + temp)", "of HBM", "fits", "FLOPs/device",
          "HBM bytes/device", "roofline", "bound", "best FLOP util.")


def table(reports: list[Report]) -> str:
    """A plain-text table of reports, one row each."""
    rows = [HEADER]
    for r in reports:
        mem = (f"{r.total / GiB:.2f} GiB ({r.args / GiB:.2f} + {r.outputs / GiB:.2f} - {r.aliased / GiB:.2f} + "
               f"{r.temps / GiB:.2f})")
        lb = " (lower bound)" if r.lower_bound else ""
        rows.append((f"{r.program} [{r.note}]", mem, f"{r.hbm / GiB:.0f} GiB", "yes" if r.fits else "NO",
                     _si(r.flops, "FLOP") + lb, _si(r.bytes, "B"), _time(r.roofline_s), r.bound,
                     f"{100 * r.best_utilisation:.0f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
