"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph, as ported by pytorch-fid) in Flax NNX, NHWC.

Computes the same function as pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`
built on `fid_inception_v3()`, in eval mode, plus the final 1008-way classifier used for the
Inception Score:

  images in [-1, 1] -> bilinear resize to 299 x 299 (half-pixel centres, no antialiasing: torch's
  `F.interpolate(..., align_corners=False)`) -> stem (5 conv+BN+ReLU, 2 max-pools) -> Mixed_5b..7c
  -> global average pool: `pool` [B, 2048] (FID's "pool3") -> `fc`: 1008 logits.

pytorch-fid takes images in [0, 1] and maps them to [-1, 1] after the resize; bilinear resizing is
affine-invariant, so feeding [-1, 1] images here gives the same network input. The TF-FID variants of
torchvision's blocks are kept: A, C and E_1 average-pool without counting the zero padding, and E_2
(Mixed_7c) max-pools in its pool branch. Every convolution has no bias and is followed by BatchNorm
(eps 1e-3, running statistics) and a ReLU.

`InceptionOutput.logits_unbiased` (pool @ W, no bias) is what openai/improved-gan's reference
Inception Score code and torch-fidelity's default use; `logits` adds the bias.

Weights are frozen `InceptionWeight` variables read from a local `.npz` written by
`python -m rq_jax.convert inception` (see `load_inception`); nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

INCEPTION_SIZE = 299
POOL_FEATURES = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
CONVERT_COMMAND = f"python -m rq_jax.convert inception --pth {FID_WEIGHTS_FILE} --out {{path}}"


class ConvSpec(NamedTuple):
    """One conv+BN+ReLU unit (torchvision's BasicConv2d): channels, kernel (kh, kw), stride, padding."""

    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)


def _c(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, pad: int | tuple[int, int] = 0) -> ConvSpec:
    k = (k, k) if isinstance(k, int) else tuple(k)
    pad = (pad, pad) if isinstance(pad, int) else tuple(pad)
    return ConvSpec(cin, cout, k, stride, pad)


# The stem: conv units by torchvision name; max-pools (3x3, stride 2) after Conv2d_2b_3x3 and Conv2d_4a_3x3.
STEM = (
    ("Conv2d_1a_3x3", _c(3, 32, 3, stride=2)),
    ("Conv2d_2a_3x3", _c(32, 32, 3)),
    ("Conv2d_2b_3x3", _c(32, 64, 3, pad=1)),
    ("Conv2d_3b_1x1", _c(64, 80, 1)),
    ("Conv2d_4a_3x3", _c(80, 192, 3)),
)
_POOL_AFTER_STEM = frozenset({"Conv2d_2b_3x3", "Conv2d_4a_3x3"})

# (torchvision name, block type, input channels, pool_features / channels_7x7 where the type has one)
BLOCKS = (
    ("Mixed_5b", "A", 192, 32),
    ("Mixed_5c", "A", 256, 64),
    ("Mixed_5d", "A", 288, 64),
    ("Mixed_6a", "B", 288, 0),
    ("Mixed_6b", "C", 768, 128),
    ("Mixed_6c", "C", 768, 160),
    ("Mixed_6d", "C", 768, 160),
    ("Mixed_6e", "C", 768, 192),
    ("Mixed_7a", "D", 768, 0),
    ("Mixed_7b", "E_1", 1280, 0),
    ("Mixed_7c", "E_2", 2048, 0),
)
BLOCK_TYPES = ("A", "B", "C", "D", "E_1", "E_2")


def block_conv_specs(kind: str, cin: int, arg: int = 0) -> dict[str, ConvSpec]:
    """The conv units of one Inception block, by torchvision attribute name, in forward order."""
    if kind == "A":
        return {
            "branch1x1": _c(cin, 64, 1),
            "branch5x5_1": _c(cin, 48, 1), "branch5x5_2": _c(48, 64, 5, pad=2),
            "branch3x3dbl_1": _c(cin, 64, 1), "branch3x3dbl_2": _c(64, 96, 3, pad=1),
            "branch3x3dbl_3": _c(96, 96, 3, pad=1),
            "branch_pool": _c(cin, arg, 1),
        }
    if kind == "B":
        return {
            "branch3x3": _c(cin, 384, 3, stride=2),
            "branch3x3dbl_1": _c(cin, 64, 1), "branch3x3dbl_2": _c(64, 96, 3, pad=1),
            "branch3x3dbl_3": _c(96, 96, 3, stride=2),
        }
    if kind == "C":
        c7 = arg
        return {
            "branch1x1": _c(cin, 192, 1),
            "branch7x7_1": _c(cin, c7, 1), "branch7x7_2": _c(c7, c7, (1, 7), pad=(0, 3)),
            "branch7x7_3": _c(c7, 192, (7, 1), pad=(3, 0)),
            "branch7x7dbl_1": _c(cin, c7, 1), "branch7x7dbl_2": _c(c7, c7, (7, 1), pad=(3, 0)),
            "branch7x7dbl_3": _c(c7, c7, (1, 7), pad=(0, 3)), "branch7x7dbl_4": _c(c7, c7, (7, 1), pad=(3, 0)),
            "branch7x7dbl_5": _c(c7, 192, (1, 7), pad=(0, 3)),
            "branch_pool": _c(cin, 192, 1),
        }
    if kind == "D":
        return {
            "branch3x3_1": _c(cin, 192, 1), "branch3x3_2": _c(192, 320, 3, stride=2),
            "branch7x7x3_1": _c(cin, 192, 1), "branch7x7x3_2": _c(192, 192, (1, 7), pad=(0, 3)),
            "branch7x7x3_3": _c(192, 192, (7, 1), pad=(3, 0)), "branch7x7x3_4": _c(192, 192, 3, stride=2),
        }
    if kind in ("E_1", "E_2"):
        return {
            "branch1x1": _c(cin, 320, 1),
            "branch3x3_1": _c(cin, 384, 1), "branch3x3_2a": _c(384, 384, (1, 3), pad=(0, 1)),
            "branch3x3_2b": _c(384, 384, (3, 1), pad=(1, 0)),
            "branch3x3dbl_1": _c(cin, 448, 1), "branch3x3dbl_2": _c(448, 384, 3, pad=1),
            "branch3x3dbl_3a": _c(384, 384, (1, 3), pad=(0, 1)), "branch3x3dbl_3b": _c(384, 384, (3, 1), pad=(1, 0)),
            "branch_pool": _c(cin, 192, 1),
        }
    raise ValueError(f"Unknown Inception block type {kind!r}; known: {', '.join(BLOCK_TYPES)}.")


def block_out_channels(kind: str, cin: int, arg: int = 0) -> int:
    """Channels of a block's output (its branches concatenated)."""
    return {"A": 224 + arg, "B": 480 + cin, "C": 768, "D": 512 + cin, "E_1": 2048, "E_2": 2048}[kind]


def conv_unit_shapes(prefix: str, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
    """Checkpoint arrays of one conv+BN unit: HWIO kernel and the four BatchNorm vectors."""
    kh, kw = spec.kernel
    return {
        f"{prefix}.conv.kernel": (kh, kw, spec.cin, spec.cout),
        f"{prefix}.bn.scale": (spec.cout,),
        f"{prefix}.bn.bias": (spec.cout,),
        f"{prefix}.bn.mean": (spec.cout,),
        f"{prefix}.bn.var": (spec.cout,),
    }


def all_conv_units() -> list[tuple[str, ConvSpec]]:
    """Every conv unit of the network as (dotted torchvision name, spec), in forward order."""
    units = list(STEM)
    for name, kind, cin, arg in BLOCKS:
        units += [(f"{name}.{sub}", spec) for sub, spec in block_conv_specs(kind, cin, arg).items()]
    return units


def inception_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the arrays in an Inception checkpoint (Flax layouts).

    `{unit}.conv.kernel` (kh, kw, in, out) and `{unit}.bn.{scale,bias,mean,var}` (out,) for every conv
    unit (torchvision names, e.g. `Mixed_6b.branch7x7_2`), `fc.kernel` (2048, 1008), `fc.bias` (1008,).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for name, spec in all_conv_units():
        shapes.update(conv_unit_shapes(name, spec))
    shapes["fc.kernel"] = (POOL_FEATURES, NUM_LOGITS)
    shapes["fc.bias"] = (NUM_LOGITS,)
    return shapes


class InceptionWeight(nnx.Variable):
    """A frozen pretrained Inception weight: not an `nnx.Param`, so no optimizer ever sees it."""


class InceptionOutput(NamedTuple):
    """`pool` [B, 2048] FID features; `logits` / `logits_unbiased` [B, 1008] (with / without fc bias)."""

    pool: jax.Array
    logits: jax.Array
    logits_unbiased: jax.Array


def resize_bilinear(x_BHWC: jax.Array, size: int) -> jax.Array:
    """Bilinear resize to size x size as torch's `F.interpolate(mode="bilinear", align_corners=False)`."""
    b, _, _, c = x_BHWC.shape
    return jax.image.resize(x_BHWC, (b, size, size, c), method="bilinear", antialias=False)


def max_pool(x_BHWC: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    """3x3 max-pool (padding counts as -inf, as in torch)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x_BHWC, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


def avg_pool_exclude_pad(x_BHWC: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool with padding 1 that averages over real pixels only (TF's, the FID patch)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x_BHWC, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    ones = jnp.ones((1, *x_BHWC.shape[1:3], 1), x_BHWC.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    return total / count


class ConvBN(nnx.Module):
    """torchvision's BasicConv2d in eval mode: conv (no bias) -> BatchNorm(eps 1e-3, running stats) -> ReLU."""

    def __init__(self, spec: ConvSpec, arrays: Mapping[str, np.ndarray], prefix: str,
                 precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST):
        self.stride = spec.stride
        self.padding = spec.padding
        self.precision = precision
        self.kernel = InceptionWeight(jnp.asarray(arrays[f"{prefix}.conv.kernel"], jnp.float32))
        self.scale = InceptionWeight(jnp.asarray(arrays[f"{prefix}.bn.scale"], jnp.float32))
        self.bias = InceptionWeight(jnp.asarray(arrays[f"{prefix}.bn.bias"], jnp.float32))
        self.mean = InceptionWeight(jnp.asarray(arrays[f"{prefix}.bn.mean"], jnp.float32))
        self.var = InceptionWeight(jnp.asarray(arrays[f"{prefix}.bn.var"], jnp.float32))

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x_BHWC, jax.lax.stop_gradient(self.kernel[...]), window_strides=(self.stride, self.stride),
            padding=((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision,
        )
        mult = self.scale[...] * jax.lax.rsqrt(self.var[...] + BN_EPS)
        return jax.nn.relu((y - self.mean[...]) * jax.lax.stop_gradient(mult) + self.bias[...])


class InceptionBlock(nnx.Module):
    """One Mixed_* block of type A, B, C, D, E_1 or E_2 (pytorch-fid's FID variants of A, C and E)."""

    def __init__(self, kind: str, cin: int, arg: int, arrays: Mapping[str, np.ndarray], prefix: str,
                 precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST):
        self.kind = kind
        for sub, spec in block_conv_specs(kind, cin, arg).items():
            setattr(self, sub, ConvBN(spec, arrays, f"{prefix}.{sub}", precision))

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        k = self.kind
        if k == "A":
            branches = [
                self.branch1x1(x_BHWC),
                self.branch5x5_2(self.branch5x5_1(x_BHWC)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x_BHWC))),
                self.branch_pool(avg_pool_exclude_pad(x_BHWC)),
            ]
        elif k == "B":
            branches = [
                self.branch3x3(x_BHWC),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x_BHWC))),
                max_pool(x_BHWC, stride=2),
            ]
        elif k == "C":
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x_BHWC)))
            d7 = self.branch7x7dbl_1(x_BHWC)
            for unit in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                d7 = unit(d7)
            branches = [self.branch1x1(x_BHWC), b7, d7, self.branch_pool(avg_pool_exclude_pad(x_BHWC))]
        elif k == "D":
            b3 = self.branch3x3_2(self.branch3x3_1(x_BHWC))
            b7 = self.branch7x7x3_1(x_BHWC)
            for unit in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
                b7 = unit(b7)
            branches = [b3, b7, max_pool(x_BHWC, stride=2)]
        else:  # E_1 / E_2
            b3 = self.branch3x3_1(x_BHWC)
            d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x_BHWC))
            pooled = avg_pool_exclude_pad(x_BHWC) if k == "E_1" else max_pool(x_BHWC, stride=1, padding=1)
            branches = [
                self.branch1x1(x_BHWC),
                self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
                self.branch_pool(pooled),
            ]
        return jnp.concatenate(branches, axis=-1)


class InceptionV3(nnx.Module):
    """FID Inception-v3: images [B, H, W, 3] in [-1, 1] -> `InceptionOutput` (pool3 features, logits).

    Build it with `load_inception(path)` for the real weights. `InceptionV3(rngs=...)` gives random
    weights of the right shapes (tests); `InceptionV3(arrays)` takes a mapping in the layout of
    `inception_checkpoint_shapes()`. `precision` is that of the convolutions and the classifier:
    HIGHEST by default so GPUs do not silently use TF32 for the reference network.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST,
    ):
        if arrays is None:
            if rngs is None:
                raise ValueError("InceptionV3 needs either `arrays` (pretrained weights) or `rngs` (random init).")
            arrays = random_inception_arrays(rngs)
        else:
            check_inception_arrays(arrays, source="the given arrays")
        self.precision = precision
        for name, spec in STEM:
            setattr(self, name, ConvBN(spec, arrays, name, precision))
        for name, kind, cin, arg in BLOCKS:
            setattr(self, name, InceptionBlock(kind, cin, arg, arrays, name, precision))
        self.fc_kernel = InceptionWeight(jnp.asarray(arrays["fc.kernel"], jnp.float32))
        self.fc_bias = InceptionWeight(jnp.asarray(arrays["fc.bias"], jnp.float32))

    def stem(self, x_BHWC: jax.Array) -> jax.Array:
        """Conv2d_1a_3x3 ... Conv2d_4a_3x3 with the two max-pools: [B, 299, 299, 3] -> [B, 35, 35, 192]."""
        h = x_BHWC
        for name, _ in STEM:
            h = getattr(self, name)(h)
            if name in _POOL_AFTER_STEM:
                h = max_pool(h, stride=2)
        return h

    def features(self, x_BHWC: jax.Array, *, resize: bool = True) -> jax.Array:
        """pool3 features [B, 2048] (float32) of images in [-1, 1]; `resize=False` skips the resize to 299."""
        if x_BHWC.ndim != 4 or x_BHWC.shape[-1] != 3:
            raise ValueError(f"Inception expects images [B, H, W, 3], got shape {x_BHWC.shape}.")
        h = x_BHWC.astype(jnp.float32)
        if resize and h.shape[1:3] != (INCEPTION_SIZE, INCEPTION_SIZE):
            h = resize_bilinear(h, INCEPTION_SIZE)
        if min(h.shape[1:3]) < 75:
            raise ValueError(f"Inception-v3 needs images of at least 75 x 75 pixels, got {h.shape[1:3]}.")
        h = self.stem(h)
        for name, *_ in BLOCKS:
            h = getattr(self, name)(h)
        return jnp.mean(h, axis=(1, 2))

    def __call__(self, x_BHWC: jax.Array, *, resize: bool = True) -> InceptionOutput:
        """Features and the 1008-way logits (with and without the classifier bias)."""
        pool = self.features(x_BHWC, resize=resize)
        unbiased = jnp.dot(pool, self.fc_kernel[...], precision=self.precision)
        return InceptionOutput(pool=pool, logits=unbiased + self.fc_bias[...], logits_unbiased=unbiased)


def random_inception_arrays(rngs: nnx.Rngs) -> dict[str, np.ndarray]:
    """He-normal kernels, BatchNorm at identity-like statistics, a small classifier: activations stay O(1).

    Drawn with numpy from one seed taken from `rngs` (eager jax.random over ~300 arrays is slow on a CPU).
    """
    rng = np.random.default_rng(np.asarray(jax.random.key_data(rngs.params())).ravel().tolist())
    arrays = {}
    for name, shape in inception_checkpoint_shapes().items():
        if name.endswith("conv.kernel"):
            fan_in = shape[0] * shape[1] * shape[2]
            arrays[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif name.endswith((".scale", ".var")):
            arrays[name] = np.ones(shape, np.float32)
        elif name == "fc.kernel":
            arrays[name] = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        else:
            arrays[name] = np.zeros(shape, np.float32)
    return arrays


def check_inception_arrays(arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Raises ValueError naming every missing, unexpected or mis-shaped array."""
    shapes = inception_checkpoint_shapes()
    problems = [f"missing {name} {shape}" for name, shape in shapes.items() if name not in arrays]
    problems += [f"unexpected {name}" for name in arrays if name not in shapes]
    problems += [
        f"{name} has shape {tuple(np.shape(arrays[name]))}, expected {shape}"
        for name, shape in shapes.items()
        if name in arrays and tuple(np.shape(arrays[name])) != shape
    ]
    if problems:
        shown = problems[:10] + ([f"... {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise ValueError(f"Inception weights in {source} do not match: " + "; ".join(shown) + ".")


def save_inception(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes an Inception checkpoint: one uncompressed `.npz` of float32 arrays, checked against the layout."""
    check_inception_arrays(arrays, source="the arrays to save")
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as f:  # a file object keeps np.savez from appending ".npz"
        np.savez(f, **{name: np.asarray(a, np.float32) for name, a in arrays.items()})


def load_inception(
    path: str | os.PathLike, *, precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST
) -> InceptionV3:
    """Reads an Inception checkpoint written by `python -m rq_jax.convert inception` and builds the network."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception weights file {os.fspath(path)!r} not found; create it from pytorch-fid's "
            f"{FID_WEIGHTS_FILE} with `{CONVERT_COMMAND.format(path=os.fspath(path))}`."
        )
    with np.load(path) as f:
        arrays = {name: f[name] for name in f.files}
    check_inception_arrays(arrays, source=os.fspath(path))
    return InceptionV3(arrays, precision=precision)
