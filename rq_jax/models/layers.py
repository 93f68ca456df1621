"""NHWC building blocks of the VQGAN-style encoder/decoder used by RQ-VAE (Flax NNX).

The blocks compute the same functions as the official PyTorch RQ-VAE (itself derived from
taming-transformers), in NHWC: ResnetBlock, single-head AttnBlock, Downsample (pad bottom/right by
one, then a 3x3 stride-2 VALID conv), Upsample (nearest x2, then a 3x3 conv), and the Encoder/Decoder
stacks. Attribute names mirror the official `state_dict` names (`down.{i}.block.{j}.conv1`,
`mid.attn_1.q`, ...), so `rq_jax.convert.rqvae` maps checkpoints by walking the parameter paths.

Initialisation follows PyTorch's defaults (uniform(+-1/sqrt(fan_in)) for conv kernels and biases,
GroupNorm scale 1 and bias 0) so that training from scratch starts like the official code.
Parameters are kept in `param_dtype`; activations are computed in `dtype` (GroupNorm statistics and
the attention softmax are always float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rq_jax.models.conv import conv_general_dilated
from rq_jax.models.group_norm import GroupNorm
from rq_jax.sharding import logical_axes

Dtype = Any

NORM_GROUPS = 32
NORM_EPS = 1e-6


def _torch_bias_init(fan_in: int):
    """PyTorch's default conv bias init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in**-0.5

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | str = 0,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D NHWC conv with torch-style symmetric integer padding and torch's default init.

    The kernel has layout (kh, kw, in, out); the official (out, in, kh, kw) maps onto it by a transpose.
    The convolution is `rq_jax.models.conv.conv_general_dilated` (XLA's, with a faster backward on CPU).
    """
    pad = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
    fan_in = in_channels * kernel_size * kernel_size
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=pad,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=logical_axes(nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                                 None, None, "conv_in", "conv_out"),
        bias_init=logical_axes(_torch_bias_init(fan_in), "conv_out"),
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


def group_norm(
    channels: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs
) -> GroupNorm:
    """GroupNorm(32 groups, eps 1e-6, affine) over the channel axis, as torch.nn.GroupNorm.

    Uses the two-pass variance (no E[x^2]-E[x]^2 cancellation) with float32 statistics
    (`rq_jax.models.group_norm.GroupNorm`: nnx.GroupNorm's function, faster on CPU).
    """
    if channels % NORM_GROUPS:
        raise ValueError(
            f"GroupNorm with {NORM_GROUPS} groups needs channels divisible by {NORM_GROUPS}, got {channels}."
        )
    return GroupNorm(
        channels,
        num_groups=NORM_GROUPS,
        epsilon=NORM_EPS,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def _block_rng(rng: jax.Array | None, index: int) -> jax.Array | None:
    return None if rng is None else jax.random.fold_in(rng, index)


class ResnetBlock(nnx.Module):
    """x + conv2(dropout(swish(norm2(conv1(swish(norm1(x))))))), with a 1x1 `nin_shortcut` on x when
    the channel count changes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, **kw)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1, **kw)
        self.norm2 = group_norm(out_channels, **kw)
        self.dropout = nnx.Dropout(dropout)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, **kw)
        self.nin_shortcut = conv(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

    def __call__(
        self, x_BxHxWxC: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        h = self.conv1(nnx.swish(self.norm1(x_BxHxWxC)))
        h = nnx.swish(self.norm2(h))
        if train and self.dropout.rate > 0:
            if rng is None:
                raise ValueError("Dropout in training mode needs a PRNG key: pass rng=..., or dropout=0.")
            h = self.dropout(h, deterministic=False, rngs=rng)
        h = self.conv2(h)
        x = x_BxHxWxC if self.nin_shortcut is None else self.nin_shortcut(x_BxHxWxC)
        return x + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over the H*W positions with 1x1-conv q/k/v/proj_out and a residual."""

    def __init__(
        self, channels: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = group_norm(channels, **kw)
        self.q = conv(channels, channels, 1, **kw)
        self.k = conv(channels, channels, 1, **kw)
        self.v = conv(channels, channels, 1, **kw)
        self.proj_out = conv(channels, channels, 1, **kw)

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        b, h, w, c = x_BxHxWxC.shape
        hn = self.norm(x_BxHxWxC)
        q_BxNxC = self.q(hn).reshape(b, h * w, c)
        k_BxNxC = self.k(hn).reshape(b, h * w, c)
        v_BxNxC = self.v(hn).reshape(b, h * w, c)
        logits_BxNxN = jnp.einsum("bic,bjc->bij", q_BxNxC, k_BxNxC).astype(jnp.float32) * (c**-0.5)
        attn_BxNxN = jax.nn.softmax(logits_BxNxN, axis=-1).astype(v_BxNxC.dtype)
        out_BxNxC = jnp.einsum("bij,bjc->bic", attn_BxNxN, v_BxNxC)
        return x_BxHxWxC + self.proj_out(out_BxNxC.reshape(b, h, w, c))


class Downsample(nnx.Module):
    """Halves H and W: zero-pad bottom/right by one, then a 3x3 stride-2 VALID conv (as the official)."""

    def __init__(
        self, channels: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs
    ):
        self.conv = conv(channels, channels, 3, stride=2, padding="VALID", dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        return self.conv(jnp.pad(x_BxHxWxC, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """Doubles H and W: nearest-neighbour x2, then a 3x3 conv with padding 1."""

    def __init__(
        self, channels: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs
    ):
        self.conv = conv(channels, channels, 3, padding=1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x_BxHxWxC, 2, axis=1), 2, axis=2)
        return self.conv(x)


class Level(nnx.Module):
    """One resolution of the encoder or decoder: residual blocks, each followed by attention when this
    resolution is in `attn_resolutions`, then an optional `downsample` (encoder) / `upsample` (decoder)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        *,
        attention: bool,
        resample: str | None,
        dropout: float,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        blocks, attns = [], []
        for _ in range(num_blocks):
            blocks.append(ResnetBlock(in_channels, out_channels, dropout=dropout, **kw))
            in_channels = out_channels
            if attention:
                attns.append(AttnBlock(out_channels, **kw))
        self.block = nnx.List(blocks)
        self.attn = nnx.List(attns)
        self.downsample = Downsample(out_channels, **kw) if resample == "down" else None
        self.upsample = Upsample(out_channels, **kw) if resample == "up" else None

    def __call__(self, h: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        for i, block in enumerate(self.block):
            h = block(h, train=train, rng=_block_rng(rng, i))
            if len(self.attn):
                h = self.attn[i](h)
        if self.downsample is not None:
            h = self.downsample(h)
        if self.upsample is not None:
            h = self.upsample(h)
        return h


class MidBlock(nnx.Module):
    """The bottleneck stack at the lowest resolution: ResnetBlock, AttnBlock, ResnetBlock."""

    def __init__(self, channels: int, *, dropout: float, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.block_1 = ResnetBlock(channels, channels, dropout=dropout, **kw)
        self.attn_1 = AttnBlock(channels, **kw)
        self.block_2 = ResnetBlock(channels, channels, dropout=dropout, **kw)

    def __call__(self, h: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        h = self.block_1(h, train=train, rng=_block_rng(rng, 0))
        h = self.attn_1(h)
        return self.block_2(h, train=train, rng=_block_rng(rng, 1))


class Encoder(nnx.Module):
    """Image [B, R, R, in_channels] -> features [B, R/f, R/f, z_channels], f = 2**(len(ch_mult) - 1).

    conv_in; per level i: `num_res_blocks` ResnetBlocks to ch*ch_mult[i] channels (+ attention at
    `attn_resolutions`), a Downsample except after the last level; mid; norm_out, swish, conv_out.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        n = len(ch_mult)
        self.conv_in = conv(in_channels, ch, 3, padding=1, **kw)
        levels, block_in, res = [], ch, resolution
        for i, mult in enumerate(ch_mult):
            last = i == n - 1
            levels.append(
                Level(block_in, ch * mult, num_res_blocks, attention=res in attn_resolutions,
                      resample=None if last else "down", dropout=dropout, **kw)
            )
            block_in = ch * mult
            res = res if last else res // 2
        self.down = nnx.List(levels)
        self.mid = MidBlock(block_in, dropout=dropout, **kw)
        self.norm_out = group_norm(block_in, **kw)
        self.conv_out = conv(block_in, z_channels, 3, padding=1, **kw)
        self.dtype = dtype

    def __call__(
        self, x_BxHxWxC: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        h = self.conv_in(x_BxHxWxC.astype(self.dtype))
        for i, level in enumerate(self.down):
            h = level(h, train=train, rng=_block_rng(rng, i))
        h = self.mid(h, train=train, rng=_block_rng(rng, len(self.down)))
        return self.conv_out(nnx.swish(self.norm_out(h)))


class Decoder(nnx.Module):
    """Features [B, r, r, z_channels] -> image [B, r*f, r*f, out_channels], mirroring the Encoder.

    conv_in; mid; per level from the lowest resolution up: `num_res_blocks + 1` ResnetBlocks to
    ch*ch_mult[i] channels (+ attention), an Upsample except at level 0; norm_out, swish, conv_out.
    `up[i]` is the level at resolution R / 2**i, as in the official `decoder.up.{i}` names.
    """

    def __init__(
        self,
        *,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = conv(z_channels, block_in, 3, padding=1, **kw)
        self.mid = MidBlock(block_in, dropout=dropout, **kw)
        levels = [None] * n
        res = resolution // 2 ** (n - 1)
        for i in reversed(range(n)):  # lowest resolution first, as the data flows
            levels[i] = Level(
                block_in, ch * ch_mult[i], num_res_blocks + 1, attention=res in attn_resolutions,
                resample="up" if i else None, dropout=dropout, **kw,
            )
            block_in = ch * ch_mult[i]
            res = res * 2 if i else res
        self.up = nnx.List(levels)
        self.norm_out = group_norm(block_in, **kw)
        self.conv_out = conv(block_in, out_channels, 3, padding=1, **kw)
        self.dtype = dtype

    def last_features(
        self, z_BxhxwxC: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """conv_out's input [B, H, W, ch*ch_mult[0]] (the features after norm_out and swish): the image is
        `conv_out(last_features(z))`, and the gradient w.r.t. the conv_out kernel can be formed from it."""
        h = self.conv_in(z_BxhxwxC.astype(self.dtype))
        h = self.mid(h, train=train, rng=_block_rng(rng, len(self.up)))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h, train=train, rng=_block_rng(rng, i))
        return nnx.swish(self.norm_out(h))

    def __call__(self, z_BxhxwxC: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """The image [B, H, W, out_channels] (compute dtype)."""
        return self.conv_out(self.last_features(z_BxhxwxC, train=train, rng=rng))
