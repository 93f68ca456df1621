"""`python -m rq_jax.convert`: how user errors end the command.

One line `error: ...` on stderr, exit status 1, no traceback (unless --debug or RQ_JAX_DEBUG=1); usage
errors exit 2 and --help 0. A missing input is named before PyTorch is needed, and a file that is no
PyTorch checkpoint at all is called that rather than answered with --allow_pickle.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from rq_jax.convert.__main__ import main

HAVE_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("yaml") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="the official converter needs torch and pyyaml")
ROOT = pathlib.Path(__file__).parents[2]


def convert_cli(*args: str, debug_env: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("RQ_JAX_DEBUG", None)
    if debug_env:
        env["RQ_JAX_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "rq_jax.convert", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_missing_checkpoint_is_one_error_line(tmp_path):
    missing = tmp_path / "nowhere"
    proc = convert_cli("official", "--ckpt", str(missing), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: No official checkpoint at {missing}: give the folder of an official "
                                        "checkpoint (model.pt and config.yaml) or the .pt file itself."]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["official", "lpips"])
def test_missing_path_is_named_before_torch_is_needed(monkeypatch, tmp_path, command):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    missing = tmp_path / "nowhere.pt"
    if command == "official":
        argv, want = ["--ckpt", str(missing)], f"error: No official checkpoint at {missing}: give the folder"
    else:
        argv = ["--vgg", str(missing), "--lin", str(missing)]
        want = f"error: PyTorch weights file '{missing}' not found."
    with pytest.raises(SystemExit) as e:
        main([command, *argv, "--out", str(tmp_path / "out")])
    assert str(e.value.code).startswith(want) and "\n" not in str(e.value.code)
    assert "PyTorch:" not in str(e.value.code)


@needs_torch
def test_random_bytes_are_not_a_checkpoint_and_no_allow_pickle_hint(tmp_path):
    (tmp_path / "model.pt").write_bytes(bytes(range(7, 256)) * 16)
    proc = convert_cli("official", "--ckpt", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: {tmp_path / 'model.pt'} is not a PyTorch checkpoint (no zip or "
                                        "pickle header; a corrupt or wrong file?)."]
    assert "allow_pickle" not in proc.stderr


@needs_torch
@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n"])
def test_empty_or_text_file_is_not_a_checkpoint(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(SystemExit) as e:
        main(["official", "--ckpt", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out"), "--allow_pickle"])
    what = "an empty file" if not content else "no zip or pickle header"
    assert e.value.code == (f"error: {tmp_path / 'model.pt'} is not a PyTorch checkpoint ({what}; a corrupt or "
                            "wrong file?).")


@needs_torch
def test_random_bytes_in_lpips_weights_are_not_a_checkpoint(tmp_path):
    (tmp_path / "vgg.pth").write_bytes(bytes(range(7, 256)) * 16)
    with pytest.raises(SystemExit) as e:
        main(["lpips", "--vgg", str(tmp_path / "vgg.pth"), "--lin", str(tmp_path / "vgg.pth"),
              "--out", str(tmp_path / "lpips.npz")])
    assert e.value.code == (f"error: {tmp_path / 'vgg.pth'} is not a PyTorch checkpoint (no zip or pickle header; "
                            "a corrupt or wrong file?).")


@pytest.mark.parametrize("how", ["--debug", "RQ_JAX_DEBUG=1"])
def test_debug_shows_the_traceback(tmp_path, how):
    args = ["official", "--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    proc = convert_cli(*args, "--debug") if how == "--debug" else convert_cli(*args, debug_env=True)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "FileNotFoundError: No official checkpoint at" in proc.stderr


def test_help_exits_0_and_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["official", "--help"])
    assert e.value.code == 0
    assert "--allow_pickle" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["official", "--ckpt", "x"])  # no --out
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: the following arguments are required: --out" in err and "Traceback" not in err
