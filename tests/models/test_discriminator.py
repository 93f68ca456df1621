"""PatchGAN discriminator: output shapes, init, parity with a torch.nn reference, the norm switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.models.discriminator import NLayerDiscriminator


@pytest.mark.parametrize("size, n_layers, patches", [(64, 3, 6), (256, 3, 30), (256, 2, 62)])
def test_output_shape(size, n_layers, patches):
    forward = lambda x: NLayerDiscriminator(n_layers=n_layers, rngs=nnx.Rngs(0))(x)
    out = nnx.eval_shape(forward, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    assert out.shape == (2, patches, patches, 1)


def test_init_and_bias_placement():
    model = NLayerDiscriminator(rngs=nnx.Rngs(0))
    convs = [block.conv for block in model.blocks]
    assert [c.kernel.shape for c in convs] == [(4, 4, 3, 64), (4, 4, 64, 128), (4, 4, 128, 256),
                                              (4, 4, 256, 512), (4, 4, 512, 1)]
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    kernel = np.asarray(convs[3].kernel[...])
    assert abs(kernel.mean()) < 1e-3 and abs(kernel.std() - 0.02) < 1e-3
    scale = np.asarray(model.blocks[3].norm.scale[...])
    assert abs(scale.mean() - 1.0) < 5e-3 and abs(scale.std() - 0.02) < 5e-3
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    assert n_params == 2_765_633  # as torch's NLayerDiscriminator(3, 64, 3), checked in test_parity

    no_norm = nnx.eval_shape(lambda: NLayerDiscriminator(norm="none", rngs=nnx.Rngs(0)))
    assert all(block.conv.bias is not None for block in no_norm.blocks)


def _torch_reference(model: NLayerDiscriminator, n_layers: int):
    """taming's NLayerDiscriminator rebuilt from torch.nn, with the Flax weights copied in."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    layers = []
    for i, block in enumerate(model.blocks):
        kernel = np.asarray(block.conv.kernel[...])
        c_in, c_out = kernel.shape[2], kernel.shape[3]
        stride = 2 if i < n_layers else 1
        conv = nn.Conv2d(c_in, c_out, kernel_size=4, stride=stride, padding=1, bias=block.conv.bias is not None)
        conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        if block.conv.bias is not None:
            conv.bias.data = torch.from_numpy(np.asarray(block.conv.bias[...]).copy())
        layers.append(conv)
        if block.norm is not None:
            bn = nn.BatchNorm2d(c_out)
            bn.weight.data = torch.from_numpy(np.asarray(block.norm.scale[...]).copy())
            bn.bias.data = torch.from_numpy(np.asarray(block.norm.bias[...]).copy())
            bn.running_mean.data = torch.from_numpy(np.asarray(block.norm.mean[...]).copy())
            bn.running_var.data = torch.from_numpy(np.asarray(block.norm.var[...]).copy())
            layers.append(bn)
        if block.act:
            layers.append(nn.LeakyReLU(0.2, True))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("n_layers", [3, 2])
def test_parity_with_torch(n_layers):
    torch = pytest.importorskip("torch")
    model = NLayerDiscriminator(n_layers=n_layers, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    for block in model.blocks:  # non-trivial running statistics and norm biases
        if block.norm is not None:
            c = block.norm.mean.shape[0]
            block.norm.mean[...] = jnp.asarray(rng.normal(0, 0.1, c), jnp.float32)
            block.norm.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
            block.norm.bias[...] = jnp.asarray(rng.normal(0, 0.1, c), jnp.float32)
    reference = _torch_reference(model, n_layers)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    assert n_params == sum(p.numel() for p in reference.parameters())
    x = rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    reference.eval()
    with torch.no_grad():
        want_eval = reference(x_t).numpy().transpose(0, 2, 3, 1)
    got_eval = model(jnp.asarray(x), use_running_average=True)
    np.testing.assert_allclose(got_eval, want_eval, rtol=1e-4, atol=1e-5)

    reference.train()  # batch statistics; running means updated with momentum 0.1 in both
    with torch.no_grad():
        want_train = reference(x_t).numpy().transpose(0, 2, 3, 1)
    got_train = model(jnp.asarray(x))
    np.testing.assert_allclose(got_train, want_train, rtol=1e-4, atol=1e-4)
    bn_t = [m for m in reference if isinstance(m, torch.nn.BatchNorm2d)]
    bn_f = [b.norm for b in model.blocks if b.norm is not None]
    for t, f in zip(bn_t, bn_f, strict=True):
        np.testing.assert_allclose(f.mean[...], t.running_mean.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_norm_switch_runs_under_jit(norm):
    model = NLayerDiscriminator(ndf=16, norm=norm, rngs=nnx.Rngs(0))
    assert not nnx.state(model, nnx.BatchStat)  # no batch statistics to share or update
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
    forward = nnx.jit(lambda m, a: m(a))
    out = forward(model, x)
    assert out.shape == (2, 6, 6, 1) and np.all(np.isfinite(out))
    # Without batch statistics each image's logits do not depend on the rest of the batch.
    np.testing.assert_allclose(forward(model, x.at[1].set(0.0))[0], out[0], rtol=1e-5, atol=1e-6)


def test_unknown_norm():
    with pytest.raises(ValueError, match="Unknown discriminator norm 'instance'"):
        NLayerDiscriminator(norm="instance", rngs=nnx.Rngs(0))
