"""TPU slice names -> chip grids (no libtpu needed) and one-sentence errors for the others."""

import pytest

from rq_jax.aot import topology as topo


@pytest.mark.parametrize("name, gen, shape, chips, accel", [
    ("v4-8", "v4", (2, 2, 1), 4, "v4-8"),
    ("v4-32", "v4", (2, 2, 4), 16, "v4-32"),
    ("v4-4096", "v4", (8, 16, 16), 2048, "v4-4096"),
    ("v5p-128", "v5p", (4, 4, 4), 64, "v5p-128"),
    ("v5e-64", "v5e", (8, 8), 64, "v5litepod-64"),
    ("v5litepod-256", "v5e", (16, 16), 256, "v5litepod-256"),
    ("v5e:16x16", "v5e", (16, 16), 256, "v5litepod-256"),
    ("v5e-1", "v5e", (1, 1), 1, "v5litepod-1"),
    ("v6e-8", "v6e", (2, 4), 8, "v6e-8"),
    ("V4:2x2x4", "v4", (2, 2, 4), 16, "v4-32"),
])
def test_names(name, gen, shape, chips, accel):
    s = topo.parse(name)
    assert (s.chip.name, s.shape, s.num_chips, s.accelerator_type) == (gen, shape, chips, accel)


def test_multislice_counts_chips():
    s = topo.parse("v5e-64", num_slices=4)
    assert s.num_chips == 256 and "4 slices" in str(s)


@pytest.mark.parametrize("name, words", [
    ("tpu", "unknown TPU topology"), ("v7-8", "unknown TPU generation"), ("v5e-48", "power of two"),
    ("v4-7", "TensorCores"), ("v5e:2x2x2", "2 dimensions"), ("v4-2", "does not exist"),
])
def test_bad_names_are_one_sentence(name, words):
    with pytest.raises(topo.TopologyError, match=words) as e:
        topo.parse(name)
    assert "\n" not in str(e.value)


def test_chip_figures_are_the_documented_ones():
    # Google Cloud's per-chip figures (bf16 peak, HBM bandwidth, HBM), as RESULTS.md and the module cite them.
    assert topo.CHIPS["v5e"].peak_flops == 197e12 and topo.CHIPS["v5e"].hbm_bytes == 16 * topo.GiB
    assert topo.CHIPS["v4"].peak_flops == 275e12 and topo.CHIPS["v4"].hbm_bytes == 32 * topo.GiB
    assert topo.CHIPS["v5p"].peak_flops == 459e12 and topo.CHIPS["v5p"].hbm_bytes == 95 * topo.GiB


@pytest.mark.parametrize("name, gpu, shape, plugin_topology", [
    ("h100-8", "h100", (1, 8), "1x1x8"), ("a100-32", "a100", (4, 8), "1x4x8"), ("h200", "h200", (1, 1), "1x1x1"),
])
def test_gpu_names(name, gpu, shape, plugin_topology):
    s = topo.parse(name)
    assert (s.chip.name, s.chip.platform, s.shape, s.topology_name) == (gpu, "cuda", shape, plugin_topology)


def test_gpu_target_config_carries_the_chip():
    text = topo.gpu_target_config(topo.GPUS["a100"])
    assert "major: 8 minor: 0" in text and "core_count: 108" in text and "A100" in text


def test_gpu_count_must_fill_hosts():
    with pytest.raises(topo.TopologyError, match="multiple of 8"):
        topo.parse("h100-12")
