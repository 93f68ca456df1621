"""notebooks/sampling.ipynb runs top to bottom (nbclient, a kernel on this interpreter) on the tiny stage-2 run."""

import json
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "sampling.ipynb"
FAKE_DEVICES = "--xla_force_host_platform_device_count"


def _kernelspec(folder: pathlib.Path) -> str:
    """A Jupyter data folder with a kernelspec that runs ipykernel on sys.executable; its kernel name."""
    name = "rq_jax_test_python"
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rq_jax tests", "language": "python",
    }))
    return name


@pytest.mark.slow
def test_sampling_notebook_runs_top_to_bottom(tiny_stage2_runs, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root, _, _ = tiny_stage2_runs
    kernel = _kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("RQ_JAX_NOTEBOOK_WORKDIR", str(root / "transformer"))
    monkeypatch.setenv("RQ_JAX_NOTEBOOK_OUT", str(tmp_path / "out"))
    # The kernel inherits XLA_FLAGS, so it sees the same 8 fake CPU devices the tiny run was trained on:
    # checkpoints.restore_parts restores without a target, which orbax refuses on another device topology.
    assert FAKE_DEVICES in os.environ.get("XLA_FLAGS", "")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=300, resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the sample grid and the coarse-to-fine rows
    text = "".join(o.get("text", "") for o in outputs)
    assert "condition 'class'" in text and "columns: depth 1..4" in text
    assert sorted(os.listdir(tmp_path / "out")) == ["coarse_to_fine.png", "samples.png"]
