"""The FID Inception-v3: converter from pytorch-fid's state dict, and numerics against a PyTorch reference.

The reference (inception_torch_reference.py) is written from torch.nn layers with pytorch-fid's names, so
its random-valued `state_dict()` has the names and shapes of `pt_inception-2015-12-05-6726825d.pth`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inception_torch_reference import randomized_fid_inception  # noqa: E402

from rq_jax.convert.__main__ import main as convert_main  # noqa: E402
from rq_jax.convert.inception import convert_inception_state_dict  # noqa: E402
from rq_jax.models import inception as inc  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    """(torch reference in eval mode, its state dict as numpy, the converted network, the .npz path)."""
    torch.set_num_threads(2)
    net = randomized_fid_inception(seed=0)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    return net, state


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """The reference's state dict saved as a .pth, converted by `python -m rq_jax.convert inception`."""
    net, _ = reference
    folder = tmp_path_factory.mktemp("inception")
    torch.save(net.state_dict(), folder / inc.FID_WEIGHTS_FILE)
    out = folder / "inception.npz"
    convert_main(["inception", "--pth", str(folder / inc.FID_WEIGHTS_FILE), "--out", str(out)])
    return out, inc.load_inception(out)


def to_nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def assert_close(got, want, rel=1e-4):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert scale > 1e-3
    np.testing.assert_allclose(got, want, atol=rel * scale, rtol=0)


def test_converter_uses_or_reports_every_tensor(reference, converted, capsys):
    _, state = reference
    arrays, report = convert_inception_state_dict(state)
    shapes = inc.inception_checkpoint_shapes()
    assert {k: a.shape for k, a in arrays.items()} == shapes
    assert len(report) == len(state)
    for name in state:
        assert sum(line.startswith((f"{name} ", f"ignored {name} ")) for line in report) == 1, name
    ignored = [line.split()[1] for line in report if line.startswith("ignored")]
    assert ignored and all(n.endswith("num_batches_tracked") for n in ignored)
    np.testing.assert_array_equal(arrays["Mixed_6b.branch7x7_2.conv.kernel"],
                                  state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(arrays["Mixed_7c.branch_pool.bn.var"], state["Mixed_7c.branch_pool.bn.running_var"])
    np.testing.assert_array_equal(arrays["fc.kernel"], state["fc.weight"].T)
    # the file the CLI wrote holds the same arrays
    path, _ = converted
    with np.load(path) as f:
        assert sorted(f.files) == sorted(shapes)
        np.testing.assert_array_equal(f["Conv2d_1a_3x3.bn.scale"], state["Conv2d_1a_3x3.bn.weight"])


def test_converter_names_missing_and_misshaped_tensors(reference):
    _, state = reference
    bad = dict(state)
    bad["Mixed_6b.branch7x7_2.conv.weight"] = np.zeros((128, 128, 7, 1), np.float32)
    del bad["fc.bias"]
    bad["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    with pytest.raises(ValueError) as e:
        convert_inception_state_dict(bad, source="x.pth")
    msg = str(e.value)
    assert "x.pth" in msg and "missing tensor fc.bias" in msg
    assert "Mixed_6b.branch7x7_2.conv.weight has shape (128, 128, 7, 1), expected (128, 128, 1, 7)" in msg
    del bad["Mixed_6b.branch7x7_2.conv.weight"]
    bad["Mixed_6b.branch7x7_2.conv.weight"] = state["Mixed_6b.branch7x7_2.conv.weight"]
    bad["fc.bias"] = state["fc.bias"]
    _, report = convert_inception_state_dict(bad)
    assert any(line.startswith("ignored AuxLogits.fc.weight") for line in report)


def test_missing_weights_file_names_the_convert_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m rq_jax\.convert inception --pth .* --out .*nope\.npz"):
        inc.load_inception(tmp_path / "nope.npz")
    np.savez(tmp_path / "partial.npz", **{"fc.bias": np.zeros(1008, np.float32)})
    with pytest.raises(ValueError, match=r"partial\.npz do not match: missing Conv2d_1a_3x3\.conv\.kernel"):
        inc.load_inception(tmp_path / "partial.npz")


@pytest.mark.parametrize("shape", [(32, 32), (400, 350)])
def test_resize_matches_torch_bilinear_interpolation(shape):
    x = np.random.default_rng(0).uniform(-1, 1, (2, *shape, 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(to_nchw(x), size=(299, 299), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(inc.resize_bilinear(jnp.asarray(x), 299), to_nhwc(want), atol=2e-6)


def test_stem_matches_torch(reference, converted):
    net, _ = reference
    x = np.random.default_rng(1).uniform(-1, 1, (2, 83, 83, 3)).astype(np.float32)
    with torch.no_grad():
        want = to_nhwc(net.stem(to_nchw(x)))
    assert_close(converted[1].stem(jnp.asarray(x)), want)


@pytest.mark.parametrize(
    "name,size", [("Mixed_5b", 7), ("Mixed_6a", 9), ("Mixed_6b", 7), ("Mixed_7a", 9), ("Mixed_7b", 5), ("Mixed_7c", 5)]
)
def test_each_block_type_matches_torch(reference, converted, name, size):
    net, _ = reference
    kind, cin = next((kind, cin) for n, kind, cin, _ in inc.BLOCKS if n == name)
    assert kind == net.BLOCK_TYPE[name]
    # post-ReLU-like inputs, with zeros, so max-pools and the padded pools are exercised on both signs of 0
    x = np.maximum(np.random.default_rng(2).normal(size=(2, size, size, cin)), 0).astype(np.float32)
    with torch.no_grad():
        want = to_nhwc(getattr(net, name)(to_nchw(x)))
    got = jax.jit(lambda m, x: m(x))(getattr(converted[1], name), jnp.asarray(x))
    assert got.shape[-1] == inc.block_out_channels(*next((k, c, a) for n, k, c, a in inc.BLOCKS if n == name))
    assert_close(got, want)


def test_full_network_matches_pytorch_fid_input_handling(reference, converted):
    """32 x 32 images in [-1, 1] -> resize to 299 -> every block -> pool3 and logits, as pytorch-fid on [0, 1]."""
    net, state = reference
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        pool, logits = net(to_nchw((x + 1) / 2))
    out = jax.jit(lambda m, x: m(x))(converted[1], jnp.asarray(x))
    assert out.pool.shape == (2, inc.POOL_FEATURES) and out.logits.shape == (2, inc.NUM_LOGITS)
    assert_close(out.pool, pool.numpy())
    assert_close(out.logits, logits.numpy())
    assert_close(out.logits_unbiased, logits.numpy() - state["fc.bias"])
