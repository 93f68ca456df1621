"""GroupNorm over NHWC whose statistics are per-channel sums: the function of `nnx.GroupNorm`, faster on CPU.

`nnx.GroupNorm` reshapes [B, H, W, C] to [B, H, W, G, C/G] and reduces over (H, W, C/G), keeping B and G:
a reduction whose kept axis sits between reduced ones. XLA:CPU runs it far below memory bandwidth (the
ImageNet RQ-VAE codec spent 1.65 of its 12 s in these reductions, batch 8 at 256 px). Here the mean and
the (two-pass) variance are sums over (H, W) into [B, C], which read the activations once with C
contiguous, then over the C/G channels of each group on that small array: GroupNorm + swish at
[8, 256, 256, 128] in 0.094 s instead of 0.129 s. Same parameters (`scale`, `bias`), same numbers up to
summation order (~1e-6 relative).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


class GroupNorm(nnx.GroupNorm):
    """`nnx.GroupNorm` (two-pass variance, float32 statistics) computed from per-channel sums for 4-D
    NHWC inputs; anything else (masks, named axes, custom reduction axes) goes to `nnx.GroupNorm`."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        if (mask is not None or x.ndim != 4 or self.reduction_axes is not None or self.axis_name is not None
                or self.feature_axis not in (-1, 3)):
            return super().__call__(x, mask=mask)
        b, h, w, c = x.shape
        groups, size = self.num_groups, self.group_size
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        out_dtype = self.dtype or jnp.result_type(*(a for a in (x, scale, bias) if a is not None))
        count = h * w * size

        def per_group(s_BxC: jax.Array) -> jax.Array:  # sum over each group's channels, back to [B, C]
            return jnp.repeat(s_BxC.reshape(b, groups, size).sum(-1) / count, size, axis=1)

        x32 = x.astype(jnp.float32)
        mean_BxC = per_group(jnp.sum(x32, axis=(1, 2)))
        d_BxHxWxC = x32 - mean_BxC[:, None, None, :]
        mul_BxC = lax.rsqrt(per_group(jnp.sum(d_BxHxWxC * d_BxHxWxC, axis=(1, 2))) + self.epsilon)
        if scale is not None:
            mul_BxC = mul_BxC * scale.astype(jnp.float32)
        y = d_BxHxWxC * mul_BxC[:, None, None, :]
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        return y.astype(out_dtype)
