"""The RESULTS.md table of compiled TPU programs: `python -m rq_jax.compile_check` over the paper's configs.

    python -m benchmarks.tpu_compile --out /tmp/tpu_compile          # every row (2-20 min each on 2 cores)
    python -m benchmarks.tpu_compile --only 1400m --out /tmp/tpu_compile

Each row is one compile_check run in its own process (libtpu on PYTHONPATH, as `make` installs it in
.venv/libtpu); its JSON lands in --out and the markdown table is printed at the end (rows already in
--out are reused). Figures are compiled, not run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
FSDP = ("--config.mesh.shape.data=1", "--config.mesh.shape.fsdp=-1")
MB2 = FSDP + ("--config.train.microbatches=2",)
T2 = "configs/transformer/"
# (name, config, topology, overrides, programs): the paper's configs at their global batch.
ROWS = [
    ("rqvae", "configs/rqvae/imagenet_8x8x4.py", "v5e-64", (), "train,eval"),
    ("1400m", T2 + "imagenet_1400m.py", "v5e-64", (), "train"),
    ("1400m", T2 + "imagenet_1400m.py", "v5e-64", FSDP, "train,eval,sample"),
    ("1400m", T2 + "imagenet_1400m.py", "v4-32", FSDP, "train,eval,sample"),
    ("1400m", T2 + "imagenet_1400m.py", "v4-32", MB2, "train"),
    ("1400m", T2 + "imagenet_1400m.py", "v5p-128", FSDP, "train,eval,sample"),
    ("1400m", T2 + "imagenet_1400m.py", "v5e-16", FSDP, "train"),
    ("1400m (grid over the mesh)", T2 + "imagenet_1400m.py", "v5e-64", FSDP, "sample"),
    ("480m", T2 + "imagenet_480m.py", "v5e-64", FSDP, "train"),
    ("821m", T2 + "imagenet_821m.py", "v5e-64", FSDP, "train"),
    ("3800m", T2 + "imagenet_3800m.py", "v5e-64", FSDP, "train"),
    ("3800m", T2 + "imagenet_3800m.py", "v5e-64", MB2, "train"),
    ("cc3m", T2 + "cc3m.py", "v5e-64", FSDP, "train"),
    ("lsun_cat (= bedroom)", T2 + "lsun_cat.py", "v5e-64", FSDP, "train"),
    ("lsun_church", T2 + "lsun_church.py", "v5e-64", FSDP, "train"),
    ("ffhq (batch 16)", T2 + "ffhq.py", "v5e-16", FSDP, "train"),
    # The 1.4B sampler per chip (the paper's A100 figures: 0.039 / 0.025 / 0.019 s/image at 100 / 200 / 500).
    ("1400m sampler 100", T2 + "imagenet_1400m.py", "v5e-1", ("--sample_batch=100",), "sample"),
    ("1400m sampler 200", T2 + "imagenet_1400m.py", "v5e-1", ("--sample_batch=200",), "sample"),
    ("1400m sampler 500", T2 + "imagenet_1400m.py", "v5e-1", ("--sample_batch=500",), "sample"),
    # GPUs through the CUDA plugin (no GPU): one A100, as in the paper's sampling table.
    ("1400m sampler 100", T2 + "imagenet_1400m.py", "a100", ("--sample_batch=100",), "sample"),
    ("1400m sampler 200", T2 + "imagenet_1400m.py", "a100", ("--sample_batch=200",), "sample"),
    ("1400m sampler 500", T2 + "imagenet_1400m.py", "a100", ("--sample_batch=500",), "sample"),
]


def row_file(row: tuple) -> str:
    """The JSON file name of a row (its name, slice, mesh and programs)."""
    name, _, topology, overrides, programs = row
    parts = [name.split()[0], topology, _mesh(overrides).replace(" ", "-"), programs.replace(",", "-")]
    return "_".join(parts) + ".json"


def _mesh(overrides: tuple) -> str:
    extra = [o.split("=", 1)[0].lstrip("-").rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1]
             for o in overrides if o not in FSDP]
    return " ".join((["fsdp"] if set(FSDP) <= set(overrides) else ["default"]) + extra)


def run_row(row: tuple, out: pathlib.Path) -> dict:
    name, config, topology, overrides, programs = row
    path = out / row_file(row)
    if not path.exists():
        plugin = "libtpu" if topology.startswith("v") else "cuda_plugin"  # beside the venv, as `make` installs them
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(sys.prefix) / plugin), str(REPO)]))
        cmd = [sys.executable, "-m", "rq_jax.compile_check", "--config", config, "--topology", topology,
               "--programs", programs, "--json", str(path), *overrides]
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        print(p.stdout + p.stderr, flush=True)
        if not path.exists():
            path.write_text(json.dumps({"reports": [], "errors": [p.stderr.strip().splitlines()[-1:]]}))
    result = json.loads(path.read_text())
    result.update(name=name, config=config, topology=topology, mesh=_mesh(overrides))
    return result


def _roofline(rep: dict) -> str:
    t = f"{rep['roofline_s'] * 1e3:.1f} ms" if rep["roofline_s"] < 1 else f"{rep['roofline_s']:.2f} s"
    if rep["program"] == "sampler":
        images = int(rep["note"].split()[1])
        t += f" ({rep['roofline_s'] / images:.4f} s/image)"
    return t


def markdown(results: list[dict]) -> str:
    gib = 2**30
    lines = ["| config | slice | mesh | program | memory/chip | fits | TFLOP/chip | roofline | bound | best util. |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for rep in r["reports"]:
            lines.append(f"| {r['name']} | {r['topology']} | {r['mesh']} | {rep['program']} ({rep['note']}) | "
                         f"{rep['total'] / gib:.1f} GiB of {rep['hbm'] / gib:.0f} | {'yes' if rep['fits'] else 'no'} | "
                         f"{rep['flops'] / 1e12:.2f} | {_roofline(rep)} | {rep['bound']} | "
                         f"{100 * rep['best_utilisation']:.0f}% |")
        for e in r["errors"]:
            e = e[0] if isinstance(e, list) and e else e
            lines.append(f"| {r['name']} | {r['topology']} | {r['mesh']} | {e} | | no | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/tpu_compile", help="folder of the per-row JSON files")
    p.add_argument("--only", default="", help="rows whose name contains this")
    a = p.parse_args(argv)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_row(row, out) for row in ROWS if a.only in row[0]]
    print(markdown(results))


if __name__ == "__main__":
    main()
