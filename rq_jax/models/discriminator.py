"""PatchGAN discriminator of VQGAN / RQ-VAE stage 1 (taming-transformers' `NLayerDiscriminator`), NHWC.

Layers (ndf = 64, n_layers = 3, k = 4x4 convs with padding 1 on every side):
  conv(3 -> ndf, s2) + bias, LeakyReLU(0.2)
  for n in 1 .. n_layers-1: conv(-> ndf * min(2**n, 8), s2), norm, LeakyReLU(0.2)
  conv(-> ndf * min(2**n_layers, 8), s1), norm, LeakyReLU(0.2)
  conv(-> 1, s1) + bias                                  -> patch logits [B, H', W', 1]
A 256x256 image gives 30x30 logits with n_layers = 3 (62x62 with n_layers = 2, the official RQ-VAE
configs' `num_layers`). Convs carry a bias only where no normalisation follows. Initialisation as the
official `weights_init`: conv weights N(0, 0.02), norm scales N(1, 0.02), norm biases 0; the biases
of the first and last conv keep PyTorch's default U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rq_jax.models.conv import conv_general_dilated

NORMS = ("batch", "group", "layer", "none")


def _normal_init(mean: float, std: float):
    """N(mean, std) initializer (the official `weights_init`)."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def _torch_conv_bias_init(fan_in: int):
    """PyTorch's default Conv2d bias initializer: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class _ConvBlock(nnx.Module):
    """4x4 conv (PyTorch padding=1 -> explicit ((1, 1), (1, 1))), optional norm, optional LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, act: bool, num_groups: int,
                 dtype: jnp.dtype | None, rngs: nnx.Rngs):
        use_norm = norm != "none"
        self.conv = nnx.Conv(
            c_in, c_out, kernel_size=(4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
            use_bias=not use_norm, kernel_init=_normal_init(0.0, 0.02),
            bias_init=_torch_conv_bias_init(c_in * 16), dtype=dtype,
            conv_general_dilated=conv_general_dilated, rngs=rngs,
        )
        scale_init, eps = _normal_init(1.0, 0.02), 1e-5
        if norm == "batch":
            # PyTorch momentum 0.1 == Flax momentum 0.9.
            self.norm = nnx.BatchNorm(c_out, momentum=0.9, epsilon=eps, scale_init=scale_init, dtype=dtype,
                                      rngs=rngs)
        elif norm in ("group", "layer"):
            groups = 1 if norm == "layer" else math.gcd(num_groups, c_out)
            self.norm = nnx.GroupNorm(c_out, num_groups=groups, epsilon=eps, scale_init=scale_init,
                                      dtype=dtype, rngs=rngs)
        else:
            self.norm = None
        self.act = act

    def __call__(self, x: jax.Array, use_running_average: bool | None) -> jax.Array:
        x = self.conv(x)
        if isinstance(self.norm, nnx.BatchNorm):
            x = self.norm(x, use_running_average=use_running_average)
        elif self.norm is not None:
            x = self.norm(x)
        return jax.nn.leaky_relu(x, 0.2) if self.act else x


class NLayerDiscriminator(nnx.Module):
    """PatchGAN discriminator: images [B, H, W, in_channels] -> patch logits [B, H', W', 1].

    norm:
      "batch" (official): BatchNorm with running statistics (PyTorch momentum 0.1, eps 1e-5). In
        training mode (`model.train()`, the default, or `use_running_average=False`) it normalises
        with the statistics of the batch it is given. Under jit with a batch sharded over devices
        these are the statistics of the *global* batch: XLA inserts the cross-replica reduction, so
        this behaves like SyncBatchNorm (the official DDP code uses per-GPU statistics instead). The
        official trainer calls the discriminator separately on the fake and on the real batch, so
        each gets its own statistics; do the same to match it. Running averages (used after
        `model.eval()`) are updated with the biased batch variance (PyTorch uses the unbiased one).
      "group": GroupNorm with gcd(num_groups, C) groups; "layer": GroupNorm with one group (statistics
        over H, W, C of each image); "none": no norm and every conv has a bias. These three have no
        batch statistics, so nothing is shared between images or replicas.
    Parameters carry no logical-axis annotations: the model is small (2.8M parameters) and replicated.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        *,
        norm: str = "batch",
        num_groups: int = 32,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        if norm not in NORMS:
            raise ValueError(f"Unknown discriminator norm {norm!r}; choose one of {', '.join(NORMS)}.")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
        blocks = [_ConvBlock(in_channels, ndf, 2, "none", True, num_groups, dtype, rngs)]
        mult = 1
        for n in range(1, n_layers):
            mult_prev, mult = mult, min(2**n, 8)
            blocks.append(_ConvBlock(ndf * mult_prev, ndf * mult, 2, norm, True, num_groups, dtype, rngs))
        mult_prev, mult = mult, min(2**n_layers, 8)
        blocks.append(_ConvBlock(ndf * mult_prev, ndf * mult, 1, norm, True, num_groups, dtype, rngs))
        blocks.append(_ConvBlock(ndf * mult, 1, 1, "none", False, num_groups, dtype, rngs))
        self.blocks = nnx.List(blocks)
        self.norm = norm

    def __call__(self, x_BHWC: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        """Patch logits [B, H', W', 1]; `use_running_average` overrides the BatchNorm train/eval mode."""
        h = x_BHWC
        for block in self.blocks:
            h = block(h, use_running_average)
        return h
