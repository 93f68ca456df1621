"""A 2-D NHWC convolution that is fast on XLA:CPU: its own backward pass, and Winograd for large 3x3 layers.

XLA:CPU computes the kernel gradient of a convolution as a convolution whose window is the whole
image (e.g. 256x256 for the RQ-VAE's top level) and runs it ~5x slower than the forward pass: on the
2-core development machine a 3x3 128->128 conv on [2, 256, 256, 128] took 0.35 s forward, 0.7-1.2 s for
the input gradient and 3.2-3.6 s for the kernel gradient (PyTorch/oneDNN: 0.65 s for all three). This
was nearly all of the gap between our RQ-VAE train step and the official one.

`conv_general_dilated` has the signature of `lax.conv_general_dilated` (so `nnx.Conv` takes it as its
`conv_general_dilated`) and a custom VJP for the plain case (NHWC/HWIO, no dilation, no groups):
- the kernel gradient is kh*kw matrix products, one per kernel tap: a strided slice of the padded input
  reshaped to [B*Ho*Wo, Cin] against the output gradient [B*Ho*Wo, Cout] (0.68 s instead of 3.2 s);
- the input gradient of a stride-1 conv is the forward convolution of the output gradient with the
  flipped, in/out-transposed kernel (0.44 s instead of 0.7-1.2 s); other strides use XLA's own.
On other platforms (`lax.platform_dependent`) the backward pass is XLA's own, so GPU/TPU programs are
what they would be without this module. Anything outside the plain case goes to `lax.conv_general_dilated`.

On CPU, large float32 3x3 stride-1 convolutions with padding 1 (the forward pass and both gradients)
run by Winograd F(4x4, 3x3) (`rq_jax.models.winograd`): 1.5-2.2x faster than XLA's direct convolution
where there are at least `WINOGRAD_MIN_TILES` 4x4 output tiles and 128 channels in and out
(`python -m benchmarks.conv3x3`), with ~1e-5 relative rounding differences instead of ~1e-6.
`RQ_JAX_WINOGRAD=0` in the environment (read when a function is traced) turns it off.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from rq_jax.models import winograd

NHWC = ("NHWC", "HWIO", "NHWC")
WINOGRAD_TILE = 4
WINOGRAD_MIN_TILES = 512     # below this (e.g. batch 2 at 32x32) the transforms cost more than they save
WINOGRAD_MIN_CHANNELS = 128  # at 64 channels the direct convolution is as fast at 256x256


def _pads(padding: str | Sequence[tuple[int, int]], in_hw: Sequence[int], k_hw: Sequence[int],
          strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(in_hw, k_hw, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _xla_conv(x, w, strides, pads, precision, preferred):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC, precision=precision,
                                    preferred_element_type=preferred)


def use_winograd(x_shape: Sequence[int], w_shape: Sequence[int], dtypes: Sequence[Any], strides: Sequence[int],
                 pads: Sequence[tuple[int, int]]) -> bool:
    """Whether a plain NHWC conv goes through Winograd on CPU: float32, 3x3, stride 1, padding 1, H and W
    multiples of 4, enough tiles and channels to win (see the module docstring)."""
    if os.environ.get("RQ_JAX_WINOGRAD", "1") == "0":
        return False
    tiles = x_shape[0] * (x_shape[1] // WINOGRAD_TILE) * (x_shape[2] // WINOGRAD_TILE)
    return (all(jnp.dtype(d) == jnp.float32 for d in dtypes) and tuple(strides) == (1, 1)
            and tuple(tuple(p) for p in pads) == ((1, 1), (1, 1))
            and winograd.applies(x_shape, w_shape, WINOGRAD_TILE) and tiles >= WINOGRAD_MIN_TILES
            and min(w_shape[2], w_shape[3]) >= WINOGRAD_MIN_CHANNELS)


def _forward(x, w, strides, pads, precision, preferred):
    """The convolution; Winograd on CPU where `use_winograd` says so, XLA's direct convolution elsewhere."""
    xla = functools.partial(_xla_conv, strides=strides, pads=pads, precision=precision, preferred=preferred)
    if not use_winograd(x.shape, w.shape, (x.dtype, w.dtype, preferred or jnp.float32), strides, pads):
        return xla(x, w)
    return lax.platform_dependent(
        x, w, cpu=functools.partial(winograd.conv3x3, tile=WINOGRAD_TILE, precision=precision), default=xla)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x_BxHxWxC, w_KhxKwxCxO, strides, pads, precision, preferred):
    return _forward(x_BxHxWxC, w_KhxKwxCxO, strides, pads, precision, preferred)


def _conv_fwd(x, w, strides, pads, precision, preferred):
    return _forward(x, w, strides, pads, precision, preferred), (x, w)


def _kernel_grad_by_taps(x, w, g, strides, pads, precision):
    """dL/dw as one [Cin, Cout] matrix product per kernel tap (see the module docstring)."""
    kh, kw, cin, cout = w.shape
    _, ho, wo, _ = g.shape
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    g_NxO = g.reshape(-1, cout)
    taps = []
    for i in range(kh):
        for j in range(kw):
            patch = lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                              (1, sh, sw, 1))
            taps.append(lax.dot_general(patch.reshape(-1, cin), g_NxO, (((0,), (0,)), ((), ())),
                                        precision=precision, preferred_element_type=jnp.float32))
    return jnp.stack(taps).reshape(kh, kw, cin, cout).astype(w.dtype)


def _input_grad_by_conv(x, w, g, strides, pads, precision):
    """dL/dx of a stride-1 conv: a forward conv of g with the flipped, transposed kernel."""
    kh, kw = w.shape[:2]
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2).astype(g.dtype)
    back = ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]), (kw - 1 - pads[1][0], kw - 1 - pads[1][1]))
    if use_winograd(g.shape, w_t.shape, (g.dtype, w_t.dtype), (1, 1), back):  # only ever traced for CPU
        return winograd.conv3x3(g, w_t, WINOGRAD_TILE, precision).astype(x.dtype)
    dx = lax.conv_general_dilated(g, w_t, (1, 1), back, dimension_numbers=NHWC, precision=precision,
                                  preferred_element_type=jnp.float32)
    return dx.astype(x.dtype)


def _conv_bwd(strides, pads, precision, preferred, res, g):
    x, w = res

    def xla_grads(x, w, g):
        _, vjp = jax.vjp(lambda x, w: _xla_conv(x, w, strides, pads, precision, preferred), x, w)
        return vjp(g)

    def cpu_grads(x, w, g):
        if use_winograd(x.shape, w.shape, (x.dtype, w.dtype, g.dtype), strides, pads):
            dw = winograd.kernel_grad3x3(x, g, WINOGRAD_TILE, precision).astype(w.dtype)
        else:
            dw = _kernel_grad_by_taps(x, w, g, strides, pads, precision)
        plain = tuple(strides) == (1, 1) and all(lo < w.shape[a] and hi < w.shape[a]
                                                  for a, (lo, hi) in enumerate(pads))
        if plain:
            dx = _input_grad_by_conv(x, w, g, strides, pads, precision)
        else:
            _, vjp_x = jax.vjp(lambda x: _xla_conv(x, w, strides, pads, precision, preferred), x)
            (dx,) = vjp_x(g)
        return _sum_to_varying(dx, x), _sum_to_varying(dw, w)

    return lax.platform_dependent(x, w, g, cpu=cpu_grads, default=xla_grads)


def _varying_axes(a: jax.Array) -> frozenset:
    """The manual mesh axes `a` varies over inside `jax.shard_map` (empty outside one)."""
    aval = jax.typeof(a)
    manual = getattr(aval, "manual_axis_type", None)  # jax 0.10
    return frozenset(getattr(manual, "varying", None) or getattr(aval, "vma", None) or ())


def _sum_to_varying(ct: jax.Array, primal: jax.Array) -> jax.Array:
    """The cotangent summed over the mesh axes it varies over but its primal does not. Inside shard_map
    a replicated kernel meets per-device images, and JAX's own transpose sums its gradient over the
    devices; the hand-written gradients above are per device until summed the same way."""
    extra = _varying_axes(ct) - _varying_axes(primal)
    return lax.psum(ct, tuple(sorted(extra))) if extra else ct


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """`lax.conv_general_dilated` with the fast CPU backward pass for 2-D NHWC/HWIO convolutions."""
    plain_dims = dimension_numbers is None or lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, dimension_numbers) == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    plain = (lhs.ndim == 4 and plain_dims and feature_group_count == 1 and batch_group_count == 1
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and kwargs.get("out_sharding") is None)
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, **kwargs)
    strides = tuple(int(s) for s in window_strides)
    pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2], strides)
    return _conv(lhs, rhs, strides, pads, precision, preferred_element_type)
