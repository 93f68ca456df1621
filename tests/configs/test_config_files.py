"""Every config file under configs/ loads with every argument it accepts, rejects a typo with the list, and
loads from any working directory (a stage-2 config imports its stage-1 config from the `configs` package)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from rq_jax.config_lib import check_known_keys, config_root, load_config_file, rqvae_config, transformer_config

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted(p for p in (REPO / "configs").glob("*/*.py") if p.name != "__init__.py")


def accepted_args(path: pathlib.Path) -> list[str]:
    """The arguments a config file accepts, read from the error a typo raises."""
    with pytest.raises(ValueError, match=r"Unknown config argument\(s\) 'runlocl'; accepted") as e:
        load_config_file(f"{path}:runlocl")
    return re.findall(r"'([^']+)'", str(e.value).split("accepted", 1)[1])


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_accepted_arg_loads_and_a_typo_raises(path):
    args = accepted_args(path)
    assert "runlocal" in args
    for arg in [None, *args]:
        c = load_config_file(f"{path}:{arg}" if arg else str(path))
        schema = rqvae_config() if c.stage == "rqvae" else transformer_config(rqvae_config())
        check_known_keys(c, schema)
        if c.stage == "rq_transformer":
            check_known_keys(c.rqvae, rqvae_config())
            assert c.model.vocab_size == c.rqvae.model.codebook_size
        if arg == "runlocal":
            assert c.train.num_steps > 0 and c.train.batch_size <= 8


def test_config_root_is_the_folder_holding_configs(tmp_path):
    assert config_root(str(REPO / "configs" / "transformer" / "cc3m.py")) == str(REPO)
    assert config_root(str(REPO / "configs" / "common.py")) == str(REPO)
    (tmp_path / "c.py").write_text("def get_config():\n    return None\n")
    assert config_root(str(tmp_path / "c.py")) is None


def test_stage2_config_loads_from_another_cwd(tmp_path):
    """From a cwd outside the repository, with only rq_jax importable: the loader and `python -m rq_jax.train`
    put the folder holding configs/ on sys.path before the file runs."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "rq_jax").symlink_to(REPO / "rq_jax")
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    config = REPO / "configs" / "transformer" / "demo.py"
    script = ("import sys\nfrom rq_jax.config_lib import load_config_file\n"
              f"c = load_config_file({str(config) + ':runlocal'!r})\n"
              "print(c.model.vocab_size, sys.modules['configs'].__file__)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    vocab, configs_init = out.stdout.split()
    assert vocab == "64" and pathlib.Path(configs_init).resolve() == REPO / "configs" / "__init__.py"
    # The command line: the file is executed while absl parses --config; a typo fails with the accepted list.
    cmd = [sys.executable, "-m", "rq_jax.train", f"--config={config}:runlocl", "--workdir", str(tmp_path / "w")]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "accepted (comma-separated): 'runlocal', 'text'" in out.stderr, out.stderr[-2000:]
    assert "ModuleNotFoundError" not in out.stderr
