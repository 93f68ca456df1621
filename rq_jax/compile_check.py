"""`python -m rq_jax.compile_check --config configs/transformer/imagenet_1400m.py --topology v5e-64`.

Before paying for a TPU slice or GPUs: compiles the run's real programs (the train step, the evaluation
step and the sample-grid sampler) for them with the TPU or GPU compiler, on this machine, no accelerator
needed. TPU: libtpu (`pip install "jax[tpu]==<jax version>"`). GPUs (`--topology h100-8`): the CUDA
plugin (`pip install jax-cuda12-plugin==<jax version> jax-cuda12-pjrt==<jax version>`).

Prints, per device, the memory the compiler allocates against the chip's HBM, the FLOPs and HBM bytes of
one call, the roofline time and the best FLOP utilisation that time allows. Config overrides work as in
`train` (`--config.train.batch_size=1024`); `--num_slices 2` compiles for a multi-slice job
(`config.mesh.dcn_shape`, default: the data axis across slices).

Exit status 0 when every program compiles and fits; 1 (one line `error: ...` per program) when one does
not; 2 for a bad topology name or flag. The figures are compiled, not run: see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host; the TPU devices are compile-only (a TPU VM's chips stay free)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rq_jax import cli  # noqa: E402

PROGRAMS = ("train", "eval", "sample")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a .py with get_config(arg)).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice: an accelerator type (v4-32, v5e-64, v5p-128, v6e-16) "
                                "or a chip grid (v5e:16x16, v4:2x2x4); or GPUs (h100-8, a100-16: 8 per host).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of that topology (multi-slice over DCN).")
_PROGRAMS = flags.DEFINE_list("programs", list(PROGRAMS), "Which programs to compile: train, eval, sample.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 0, "Images per sampler call (0: the trainer's sample grid).")
_TEXT_ROWS = flags.DEFINE_integer("text_rows", 3_318_333, "Captions in a text-conditioned run's token table "
                                  "(default: CC-3M's training captions).")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_HLO_DIR = flags.DEFINE_string("hlo_dir", None, "Write each compiled program's HLO text here (<program>.hlo.txt).")
flags.DEFINE_bool("debug", False, "Show tracebacks of errors (also RQ_JAX_DEBUG=1).")


def slice_axes(config, num_slices: int) -> dict[str, int]:
    """Slices per mesh axis: `config.mesh.dcn_shape`, or (unset, several slices) the data axis across them."""
    dcn = {k: int(v) for k, v in dict(config.mesh.get("dcn_shape", None) or {}).items() if int(v) != 1}
    return dcn or ({"data": num_slices} if num_slices > 1 else {})


def build_mesh(config, devices: list, num_slices: int):
    """The run's mesh (`config.mesh`) over compile-only devices, slices laid out by `slice_axes`."""
    from rq_jax import sharding

    dcn = slice_axes(config, num_slices)
    try:
        return sharding.mesh_from_config(dict(config.mesh.shape), devices=devices, dcn_shape=dcn or None)
    except ValueError as e:
        raise cli.UsageError(f"{cli.one_line(e)} (the topology has {len(devices)} chips)") from e


def check(config, topology: str, *, num_slices: int = 1, programs: tuple[str, ...] = PROGRAMS,
          sample_batch: int = 0, text_rows: int = 3_318_333, hlo_dir: str | None = None,
          out=sys.stdout) -> tuple[list, list[str]]:
    """Compiles `programs` of `config` for the slice; prints the table to `out`; returns (reports, errors)."""
    import jax

    from rq_jax.aot import report
    from rq_jax.aot import topology as topo
    from rq_jax.trainers import programs as progs

    try:
        tpu = topo.parse(topology, num_slices)
    except topo.TopologyError as e:
        raise cli.UsageError(str(e)) from e
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise cli.UsageError(f"--programs: unknown {', '.join(unknown)}; choose from {', '.join(PROGRAMS)}.")
    stage = config.get("stage", None)
    if stage not in ("rqvae", "rq_transformer"):
        raise cli.UsageError(f"config.stage={stage!r}: compile_check knows 'rqvae' and 'rq_transformer'.")
    devices = topo.compile_only_devices(tpu)
    mesh = build_mesh(config, devices, num_slices)
    chip = tpu.chip
    across = f", slices per axis {slice_axes(config, num_slices)}" if num_slices > 1 else ""
    compiler = f"libtpu {topo.libtpu_version()}" if chip.platform == "tpu" else \
        f"jax-cuda12-plugin {topo.cuda_plugin_version()}"
    print(f"{stage} on {tpu}, mesh {dict(mesh.shape)}{across}; jax {jax.__version__}, {compiler}; "
          f"compiled, not run", file=out)
    usable = "" if chip.platform == "tpu" else f" ({chip.usable_bytes / topo.GiB:.1f} GiB for JAX's allocator)"
    print(f"{chip.name} per chip: {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, {chip.hbm_bandwidth / 1e9:.0f} GB/s, "
          f"{chip.hbm_bytes / topo.GiB:.1f} GiB HBM{usable}", file=out, flush=True)
    if stage == "rqvae":
        built = progs.stage1(config, mesh)
    else:
        built = progs.stage2(config, mesh, text_rows=text_rows, sample_batch=sample_batch or None)
    names = {"train step": "train", "eval step": "eval", "sampler": "sample"}
    reports, errors = [], []
    for program in built:
        if names[program.name] not in programs:
            continue
        try:
            r = report.analyse(program, chip, hlo_dir=hlo_dir)
        except report.CompileFailed as e:
            errors.append(f"{e} ({program.note}, {tpu.accelerator_type}).")
            continue
        reports.append(r)
        if not r.fits:
            errors.append(f"the {r.program} does not fit: it needs {r.total / topo.GiB:.1f} GiB per device and a "
                          f"{chip.name} has {r.hbm / topo.GiB:.1f} GiB for it ({r.note}, {tpu.accelerator_type}).")
    if reports:
        print(report.table(reports), file=out, flush=True)
    return reports, errors


def main(argv: list[str]) -> int:
    del argv
    config = cli.loaded_config(_CONFIG)  # a config file that fails to load: one line, exit 2
    if config is None or not _TOPOLOGY.value:
        raise cli.UsageError("usage: python -m rq_jax.compile_check --config configs/transformer/imagenet_1400m.py "
                             "--topology v5e-64")
    logging.set_verbosity(logging.ERROR)
    reports, errors = check(config, _TOPOLOGY.value, num_slices=_NUM_SLICES.value, programs=tuple(_PROGRAMS.value),
                            sample_batch=_SAMPLE_BATCH.value, text_rows=_TEXT_ROWS.value, hlo_dir=_HLO_DIR.value)
    if _JSON.value:
        import json

        with open(_JSON.value, "w") as f:
            json.dump({"topology": _TOPOLOGY.value, "num_slices": _NUM_SLICES.value,
                       "reports": [r.as_dict() for r in reports], "errors": errors}, f, indent=1)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def _main(argv: list[str]) -> None:
    del argv
    cli.run(main, sys.argv[1:], compilation_cache=False)


if __name__ == "__main__":
    from rq_jax.config_lib import add_config_root_from_argv

    add_config_root_from_argv(sys.argv)
    app.run(_main, flags_parser=cli.parse_flags)
