"""LPIPS: converter round trip from torch-layout files, parity with a torch.nn.functional reference."""

import contextlib
import io
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.convert.__main__ import main as convert_main
from rq_jax.convert.lpips import convert_lpips, convert_lpips_state_dicts
from rq_jax.models.lpips import (
    VGG16_CONV_CHANNELS,
    VGG16_CONV_INDICES,
    _unit_normalize,
    load_lpips,
    lpips_checkpoint_shapes,
)

# torchvision's vgg16 `features` config and the lpips package's tap points (end of slice1..slice5).
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAP_FEATURE_INDICES = (3, 8, 15, 22, 29)
LIN_CHANNELS = (64, 128, 256, 512, 512)


def _random_state_dicts(seed=0):
    """Random torch-layout state dicts: torchvision VGG16 (+ a small stand-in classifier) and lpips lins."""
    rng = np.random.default_rng(seed)
    vgg, c_in = {}, 3
    for idx, c_out in zip(VGG16_CONV_INDICES, VGG16_CONV_CHANNELS, strict=True):
        vgg[f"features.{idx}.weight"] = rng.normal(0, math.sqrt(2 / (9 * c_in)), (c_out, c_in, 3, 3))
        vgg[f"features.{idx}.bias"] = rng.normal(0, 0.1, (c_out,))
        c_in = c_out
    vgg["classifier.0.weight"] = rng.normal(size=(8, 16))  # the real one is (4096, 25088): reported, unused
    vgg["classifier.0.bias"] = rng.normal(size=(8,))
    lin = {f"lin{k}.model.1.weight": rng.uniform(0, 2 / c, (1, c, 1, 1)) for k, c in enumerate(LIN_CHANNELS)}
    as32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}
    return as32(vgg), as32(lin)


def torch_lpips_reference(vgg, lin, x_nchw, y_nchw):
    """LPIPS-VGG from torch.nn.functional ops, walking torchvision's `features` layer list; -> [B, 1, 1, 1]."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(v).double() for k, v in {**vgg, **lin}.items()}
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(h):
        out, i = [], 0
        for v in VGG16_CFG:
            if v == "M":
                h, i = F.max_pool2d(h, kernel_size=2, stride=2), i + 1
            else:
                h = F.relu(F.conv2d(h, t[f"features.{i}.weight"], t[f"features.{i}.bias"], padding=1))
                if i + 1 in TAP_FEATURE_INDICES:
                    out.append(h)
                i += 2
        return out

    def unit(f):
        return f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + 1e-10)

    x = torch.from_numpy(np.asarray(x_nchw)).double()
    y = torch.from_numpy(np.asarray(y_nchw)).double()
    total = 0
    for k, (fx, fy) in enumerate(zip(taps((x - shift) / scale), taps((y - shift) / scale), strict=True)):
        total = total + F.conv2d((unit(fx) - unit(fy)) ** 2, t[f"lin{k}.model.1.weight"]).mean([2, 3], keepdim=True)
    return total.numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Saves random torch-layout files with torch.save, converts them with the CLI, returns paths and dicts."""
    torch = pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("lpips")
    vgg, lin = _random_state_dicts()
    torch.save({k: torch.from_numpy(v) for k, v in vgg.items()}, tmp / "vgg16-397923af.pth")
    torch.save({k: torch.from_numpy(v) for k, v in lin.items()}, tmp / "vgg.pth")
    out = tmp / "weights" / "lpips_vgg16.npz"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        convert_main(["lpips", "--vgg", str(tmp / "vgg16-397923af.pth"), "--lin", str(tmp / "vgg.pth"),
                      "--out", str(out)])
    return out, vgg, lin, printed.getvalue()


def test_converter_cli_writes_checkpoint_and_reports(converted):
    out, _, _, printed = converted
    assert "features.28.weight (512, 512, 3, 3) -> features.28.kernel (3, 3, 512, 512)" in printed
    assert "ignored classifier.0.bias (8,)" in printed
    assert printed.strip().endswith("31 tensors converted, 2 ignored")
    with np.load(out) as f:
        assert {k: f[k].shape for k in f.files} == lpips_checkpoint_shapes()


def test_parity_with_torch_reference(converted):
    out, vgg, lin, _ = converted
    graphdef, state = nnx.split(load_lpips(out))
    lpips_fn = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))  # weights as arguments: faster compile
    rng = np.random.default_rng(1)
    for shape in [(2, 32, 32, 3), (1, 36, 44, 3)]:  # the second has odd sizes after pooling (floor)
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        y = np.clip(x + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
        got_B = np.asarray(lpips_fn(state, x, y))
        want = torch_lpips_reference(vgg, lin, x.transpose(0, 3, 1, 2), y.transpose(0, 3, 1, 2))
        assert got_B.shape == (shape[0],)
        assert np.all(got_B > 0)
        np.testing.assert_allclose(got_B, want.reshape(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(lpips_fn(state, x, x)), 0.0, atol=1e-7)


def test_gradients_reach_images_not_weights(converted):
    model = load_lpips(converted[0])
    assert not jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))  # nothing for an optimizer to train
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    graphdef, state = nnx.split(model)
    loss = lambda s, a: nnx.merge(graphdef, s)(a, y).sum()
    grad_state, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(state, x)
    assert np.all(np.isfinite(grad_x)) and float(jnp.abs(grad_x).max()) > 0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grad_state))


def test_all_zero_features_give_finite_gradients():
    """A feature vector that the ReLUs zeroed is normalised to 0 with a finite (not NaN) gradient."""
    feat = jnp.zeros((1, 2, 2, 8)).at[0, 0, 0].set(jnp.arange(8.0))
    out = jax.jit(_unit_normalize)(feat)
    np.testing.assert_allclose(out[0, 0, 0], np.arange(8.0) / np.sqrt(np.sum(np.arange(8.0) ** 2)), rtol=1e-6)
    grad = jax.jit(jax.grad(lambda f: jnp.sum(_unit_normalize(f) * jnp.arange(8.0))))(feat)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(out[0, 1], 0.0)


def test_missing_file_message(tmp_path):
    path = tmp_path / "nowhere" / "lpips_vgg16.npz"
    with pytest.raises(FileNotFoundError) as err:
        load_lpips(path)
    message = str(err.value)
    assert str(path) in message
    assert f"python -m rq_jax.convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out {path}" in message


def test_converter_names_bad_and_ignored_tensors():
    vgg, lin = _random_state_dicts()
    arrays, report = convert_lpips_state_dicts(vgg, lin)
    assert set(arrays) == set(lpips_checkpoint_shapes())
    assert any(line.startswith("ignored classifier.0.weight (8, 16)") for line in report)
    assert len(report) == len(vgg) + len(lin)  # every source tensor converted or reported

    bad_vgg = dict(vgg, **{"features.5.weight": np.zeros((128, 64, 3, 1), np.float32)})
    with pytest.raises(ValueError, match=r"features\.5\.weight has shape \(128, 64, 3, 1\)"):
        convert_lpips_state_dicts(bad_vgg, lin)
    no_lin3 = {k: v for k, v in lin.items() if not k.startswith("lin3")}
    with pytest.raises(ValueError, match=r"missing tensor lin3\.model\.1\.weight"):
        convert_lpips_state_dicts(vgg, no_lin3)


def test_checkpoint_with_wrong_shape_names_array(tmp_path):
    arrays, _ = convert_lpips_state_dicts(*_random_state_dicts())
    arrays["lin2.kernel"] = np.zeros((1, 1, 255, 1), np.float32)
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=r"lin2\.kernel has shape \(1, 1, 255, 1\), expected \(1, 1, 256, 1\)"):
        load_lpips(path)


def test_converter_without_torch_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    for name in ("vgg16.pth", "vgg.pth"):  # the files exist: a missing file is named before torch is needed
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ImportError, match=r"pip install rq_jax\[convert\]"):
        convert_lpips(tmp_path / "vgg16.pth", tmp_path / "vgg.pth", tmp_path / "out.npz")
