"""LPIPS perceptual distance (VGG16 variant, Zhang et al. 2018) in Flax NNX, NHWC, inputs in [-1, 1].

Computes the same function as the `lpips` package's `LPIPS(net="vgg")` (and its copies in
taming-transformers and the official RQ-VAE code), in eval mode (dropout before the learned 1x1
layers is inactive):

  x -> (x - shift) / scale -> VGG16 `features` up to relu5_3, tapping relu1_2, relu2_2, relu3_3,
  relu4_3, relu5_3 -> unit-normalise every feature vector over channels (eps 1e-10) -> squared
  difference of the two images' features -> learned non-negative 1x1 projection to one channel
  (no bias) -> spatial mean -> sum over the five taps.

`LPIPS.__call__` returns one distance per image, shape [B] (the PyTorch module returns
[B, 1, 1, 1]; the official trainer takes its mean over the batch).

The weights are frozen: they are stored as `LPIPSWeight` variables, not `nnx.Param`, so an optimizer
over `nnx.Param` never sees them, and the forward pass stops gradients into them; gradients still
flow to the input images. They are read from a local `.npz` file written by
`python -m rq_jax.convert lpips` (see `load_lpips`); nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rq_jax.models.conv import conv_general_dilated

# torchvision's `vgg16().features` indices of the 13 convolutions (each followed by a ReLU).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
# Positions (in the list of 13 convs) preceded by a 2x2/2 max-pool, and those whose ReLU is tapped.
_POOL_BEFORE = frozenset({2, 4, 7, 10})
_TAP_AFTER = (1, 3, 6, 9, 12)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# The lpips package's ScalingLayer constants (ImageNet statistics expressed for inputs in [-1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10  # `normalize_tensor`'s eps in the lpips package

CONVERT_COMMAND = "python -m rq_jax.convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out {path}"


def lpips_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the arrays in an LPIPS checkpoint (Flax layouts).

    `features.{i}.kernel` (3, 3, in, out) and `features.{i}.bias` (out,) for torchvision's conv index
    i, and `lin{k}.kernel` (1, 1, C_k, 1) for the five learned 1x1 layers.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 3
    for idx, c_out in zip(VGG16_CONV_INDICES, VGG16_CONV_CHANNELS, strict=True):
        shapes[f"features.{idx}.kernel"] = (3, 3, c_in, c_out)
        shapes[f"features.{idx}.bias"] = (c_out,)
        c_in = c_out
    for k, c in enumerate(LPIPS_CHANNELS):
        shapes[f"lin{k}.kernel"] = (1, 1, c, 1)
    return shapes


class LPIPSWeight(nnx.Variable):
    """A frozen pretrained LPIPS/VGG weight: deliberately not an `nnx.Param`, so it is never trained."""


def _safe_norm(x: jax.Array, axis: int) -> jax.Array:
    """sqrt(sum(x**2)) over `axis` (keepdims) whose gradient is 0, not NaN, where the vector is all zero.

    The forward value is identical to the plain expression; PyTorch's version returns NaN gradients
    for an all-zero feature vector (sqrt'(0) * 0).
    """
    sq_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    positive = sq_sum > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq_sum, 1.0)), 0.0)


def _unit_normalize(feat_BHWC: jax.Array) -> jax.Array:
    """The lpips package's `normalize_tensor`: x / (||x||_channels + 1e-10)."""
    return feat_BHWC / (_safe_norm(feat_BHWC, axis=-1) + LPIPS_EPS)


class LPIPS(nnx.Module):
    """LPIPS-VGG16 distance between two image batches [B, H, W, 3] in [-1, 1] -> [B].

    Build it with `load_lpips(path)` for the real weights. `LPIPS(rngs=...)` gives random weights of
    the right shapes (tests, shape inference); `LPIPS(arrays)` takes a mapping in the layout of
    `lpips_checkpoint_shapes()`. Images need H, W >= 16 (four 2x2 max-pools).
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        shapes = lpips_checkpoint_shapes()
        if arrays is None:
            if rngs is None:
                raise ValueError("LPIPS needs either `arrays` (pretrained weights) or `rngs` (random init).")
            arrays = _random_arrays(shapes, rngs)
        else:
            _check_arrays(arrays, shapes, source="the given arrays")
        self.dtype = dtype
        self.kernels = nnx.List(
            [LPIPSWeight(jnp.asarray(arrays[f"features.{i}.kernel"], jnp.float32)) for i in VGG16_CONV_INDICES]
        )
        self.biases = nnx.List(
            [LPIPSWeight(jnp.asarray(arrays[f"features.{i}.bias"], jnp.float32)) for i in VGG16_CONV_INDICES]
        )
        self.lins = nnx.List(
            [LPIPSWeight(jnp.asarray(arrays[f"lin{k}.kernel"], jnp.float32)) for k in range(len(LPIPS_CHANNELS))]
        )

    def features(self, x_BHWC: jax.Array) -> list[jax.Array]:
        """The five VGG16 ReLU taps (relu1_2 ... relu5_3) of images already passed through the scaling."""
        taps = []
        h = x_BHWC.astype(self.dtype)
        for j, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            if j in _POOL_BEFORE:
                h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2), padding="VALID")
            k_33IO = jax.lax.stop_gradient(kernel[...]).astype(self.dtype)
            b_O = jax.lax.stop_gradient(bias[...]).astype(self.dtype)
            h = conv_general_dilated(  # XLA's conv, faster backward on CPU
                h, k_33IO, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            h = jax.nn.relu(h + b_O)
            if j in _TAP_AFTER:
                taps.append(h)
        return taps

    def __call__(self, x_BHWC: jax.Array, y_BHWC: jax.Array) -> jax.Array:
        """LPIPS distance per image, [B] float32; differentiable w.r.t. both inputs."""
        if x_BHWC.shape != y_BHWC.shape or x_BHWC.ndim != 4 or x_BHWC.shape[-1] != 3:
            raise ValueError(f"LPIPS expects two [B, H, W, 3] batches of equal shape, got {x_BHWC.shape} "
                             f"and {y_BHWC.shape}.")
        shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
        scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
        batch = x_BHWC.shape[0]
        xy_2BHWC = jnp.concatenate([x_BHWC, y_BHWC], axis=0).astype(jnp.float32)
        taps = self.features((xy_2BHWC - shift) / scale)
        total_B = jnp.zeros((batch,), jnp.float32)
        for feat_2BHWC, lin in zip(taps, self.lins, strict=True):
            feat_2BHWC = _unit_normalize(feat_2BHWC.astype(jnp.float32))
            diff_BHWC = jnp.square(feat_2BHWC[:batch] - feat_2BHWC[batch:])
            w_C = jax.lax.stop_gradient(lin[...]).reshape(-1)
            total_B = total_B + jnp.mean(diff_BHWC @ w_C, axis=(1, 2))
        return total_B


def _random_arrays(shapes: Mapping[str, tuple[int, ...]], rngs: nnx.Rngs) -> dict[str, jax.Array]:
    """He-normal convs, zero biases and small non-negative 1x1 weights (LPIPS clamps them to >= 0)."""
    arrays = {}
    for name, shape in shapes.items():
        key = rngs.params()
        if name.endswith(".bias"):
            arrays[name] = jnp.zeros(shape, jnp.float32)
        elif name.startswith("lin"):
            arrays[name] = jax.random.uniform(key, shape, jnp.float32, 0.0, 2.0 / shape[2])
        else:
            fan_in = shape[0] * shape[1] * shape[2]
            arrays[name] = jax.random.normal(key, shape, jnp.float32) * np.sqrt(2.0 / fan_in)
    return arrays


def _check_arrays(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raises ValueError naming every missing, unexpected or mis-shaped array."""
    problems = [f"missing {name} {shape}" for name, shape in shapes.items() if name not in arrays]
    problems += [f"unexpected {name}" for name in arrays if name not in shapes]
    problems += [
        f"{name} has shape {tuple(np.shape(arrays[name]))}, expected {shape}"
        for name, shape in shapes.items()
        if name in arrays and tuple(np.shape(arrays[name])) != shape
    ]
    if problems:
        raise ValueError(f"LPIPS weights in {source} do not match: " + "; ".join(problems) + ".")


def save_lpips(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes an LPIPS checkpoint: one uncompressed `.npz` of float32 arrays, checked against the layout."""
    _check_arrays(arrays, lpips_checkpoint_shapes(), source="the arrays to save")
    with open(path, "wb") as f:  # a file object keeps np.savez from appending ".npz" to the name
        np.savez(f, **{name: np.asarray(a, np.float32) for name, a in arrays.items()})


def load_lpips(path: str | os.PathLike, *, dtype: jnp.dtype = jnp.float32) -> LPIPS:
    """Reads an LPIPS checkpoint written by `python -m rq_jax.convert lpips` and builds the module."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"LPIPS weights file {os.fspath(path)!r} not found; create it from torchvision's VGG16 and the "
            f"lpips package's linear layers with `{CONVERT_COMMAND.format(path=os.fspath(path))}`."
        )
    with np.load(path) as f:
        arrays = {name: f[name] for name in f.files}
    _check_arrays(arrays, lpips_checkpoint_shapes(), source=os.fspath(path))
    return LPIPS(arrays, dtype=dtype)
