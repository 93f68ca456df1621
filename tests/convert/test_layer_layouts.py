"""PyTorch reference layers -> the converter's layout functions -> rq_jax layers give the same outputs."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.convert import rq_transformer as tf_convert
from rq_jax.convert import rqvae as vae_convert
from rq_jax.convert.official_weights import layout_from_official
from rq_jax.convert.official_yaml import STAGE1, STAGE2
from tests.convert.official_files import needs_torch


# ---- (d) PyTorch reference layers -> layout functions -> rq_jax layers -------------------------------------
def _torch_layers():
    import torch

    class AttnBlock(torch.nn.Module):
        """The VQGAN/RQ-VAE attention block: GroupNorm, 1x1 q/k/v, single-head softmax attention, 1x1 proj_out."""

        def __init__(self, c):
            super().__init__()
            self.norm = torch.nn.GroupNorm(32, c, eps=1e-6, affine=True)
            self.q, self.k, self.v, self.proj_out = (torch.nn.Conv2d(c, c, 1) for _ in range(4))

        def forward(self, x):
            h = self.norm(x)
            b, c, hh, ww = x.shape
            q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)
            k = self.k(h).reshape(b, c, hh * ww)
            w = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)
            v = self.v(h).reshape(b, c, hh * ww)
            out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
            return x + self.proj_out(out)

    return torch, AttnBlock


def _load_into(flax_layer, torch_layer, stage, name_of):
    """The torch layer's state dict -> the converter's layout functions -> the Flax layer's parameters."""
    sd = {k: v.detach().numpy() for k, v in torch_layer.state_dict().items()}
    flat = []
    for path, _ in nnx.to_flat_state(nnx.state(flax_layer, nnx.Param)):
        flat.append((path, jnp.asarray(layout_from_official(stage, path, sd.pop(name_of(path))))))
    assert sd == {}, f"unused torch tensors {sorted(sd)}"
    nnx.update(flax_layer, nnx.from_flat_state(flat))


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@needs_torch
@pytest.mark.parametrize("kind", ["conv3x3", "conv1x1", "group_norm", "attn_block"])
def test_torch_vae_layers_match_after_layout_conversion(kind):
    from rq_jax.models import layers

    torch, AttnBlock = _torch_layers()
    torch.manual_seed(0)
    c = 64
    rngs = nnx.Rngs(0)
    if kind == "conv3x3":
        ref, ours = torch.nn.Conv2d(32, c, 3, padding=1), layers.conv(32, c, 3, padding=1, rngs=rngs)
    elif kind == "conv1x1":
        ref, ours = torch.nn.Conv2d(32, c, 1), layers.conv(32, c, 1, rngs=rngs)
    elif kind == "group_norm":
        ref, ours = torch.nn.GroupNorm(32, c, eps=1e-6), layers.group_norm(c, rngs=rngs)
        with torch.no_grad():
            ref.weight.normal_(), ref.bias.normal_()
    else:
        ref, ours = AttnBlock(c), layers.AttnBlock(c, rngs=rngs)
        with torch.no_grad():
            ref.norm.weight.normal_(), ref.norm.bias.normal_()
    _load_into(ours, ref, STAGE1, vae_convert.official_name)
    x_NCHW = _rand(2, 32 if kind.startswith("conv") else c, 8, 8)
    with torch.no_grad():
        want = ref(torch.from_numpy(x_NCHW)).numpy()
    got = np.asarray(ours(jnp.asarray(x_NCHW.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@needs_torch
@pytest.mark.parametrize("kind", ["linear", "layer_norm"])
def test_torch_transformer_layers_match_after_layout_conversion(kind):
    from rq_jax.models import transformer_layers as tl

    torch, _ = _torch_layers()
    torch.manual_seed(0)
    rngs = nnx.Rngs(0)
    if kind == "linear":
        ref, ours = torch.nn.Linear(48, 80), tl.linear(48, 80, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    else:
        ref, ours = torch.nn.LayerNorm(48), tl.layer_norm(48, param_dtype=jnp.float32, rngs=rngs)
        with torch.no_grad():
            ref.weight.normal_(), ref.bias.normal_()
    _load_into(ours, ref, STAGE2, tf_convert.official_name)
    x = _rand(3, 5, 48)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), want, atol=1e-5, rtol=1e-5)
