"""3x3 stride-1 convolutions by Winograd's minimal filtering, F(m x m, 3 x 3), for XLA:CPU.

On a CPU both rq_jax (XLA) and the official code (oneDNN) compute a 3x3 convolution directly, at about
the machine's float32 peak, so the RQ-VAE's encoder and decoder (nearly all 3x3 convolutions) cannot get
faster by scheduling alone. Winograd's algorithm computes an m x m output tile from an (m+2) x (m+2) input
tile with (m+2)^2 products per channel pair instead of 9 m^2: 2.25x fewer multiplications for m = 2,
4x fewer for m = 4 (Lavin & Gray, 2016). It is
    y_tile = A^T [ (G w G^T) (.) (B^T x_tile B) ] A,
and the elementwise product (.) summed over input channels is (m+2)^2 matrix products
[tiles, Cin] x [Cin, Cout], which XLA runs as well as any matmul.

The transforms are memory traffic, and their form decides the compile time as much as the speed. The
input transform (overlapping tiles) is a row pass and a column pass, with an `optimization_barrier` that
makes XLA materialise the row pass once (1.5x the activations): written naively XLA fuses each of the
(m+2)^2 transformed tiles into its own loop that re-reads the whole input. The kernel transform, the output
transform and the kernel gradient's dM = A dY A^T (non-overlapping tiles) are each one matrix product with
a Kronecker product of the small matrices: one HLO op, where the same sums written term by term were
hundreds, and XLA:CPU took ~2 s to compile one layer's forward and backward passes (the ImageNet RQ-VAE's
train step: 60 s to compile, now 12 s). `kernel_grad3x3` runs the three steps transposed for the kernel gradient
(one [Cin, tiles] x [tiles, Cout] product per transformed position instead of nine per-tap products over
all pixels).

Accuracy: F(2x2) rounds like the direct convolution (max error ~1e-6 relative in float32); F(4x4)'s
transform constants (1/24, 8, ...) cost about one more decimal digit (~1e-5 relative). This module is used
for float32 only (`rq_jax.models.conv` decides where); in bfloat16 the transforms would lose too much.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# (B^T, G, A^T) for output tiles of m x m (Lavin & Gray's interpolation points 0, +-1, +-2, infinity).
MATRICES: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                 np.float64),
    ),
}


def _combine(coefs: Sequence[float], terms: Sequence[jax.Array]) -> jax.Array:
    """sum_k coefs[k] * terms[k], skipping zeros and multiplications by +-1 (the transforms are sparse)."""
    out = None
    for c, t in zip(coefs, terms, strict=True):
        if c == 0:
            continue
        v = t if c == 1 else (-t if c == -1 else t * jnp.asarray(c, t.dtype))
        out = v if out is None else out + v
    assert out is not None
    return out


def kernel_transform(w_3x3xCxO: jax.Array, tile: int) -> jax.Array:
    """G w G^T for every (in, out) channel pair: [(tile+2)^2, Cin, Cout]."""
    _, g, _ = MATRICES[tile]
    return _sandwich(g, w_3x3xCxO.reshape(9, *w_3x3xCxO.shape[2:]))


def _sandwich(mat: np.ndarray, t_NNx: jax.Array) -> jax.Array:
    """mat T mat^T for a small n x n matrix T given row major on the leading axis of `t_NNx`, for every
    trailing index: [rows(mat)^2, ...]. One matrix product with kron(mat, mat) (entry [p k + q, i n + j] is
    mat[p, i] mat[q, j]): a single HLO op, where the same sums written out term by term are ~800 ops that
    XLA:CPU takes ~0.5 s to compile per layer (and runs 2x slower)."""
    k = mat.shape[0]
    coefs = jnp.asarray(np.kron(mat, mat), t_NNx.dtype)
    out = jnp.dot(coefs, t_NNx.reshape(t_NNx.shape[0], -1), precision=lax.Precision.HIGHEST)
    return out.reshape(k * k, *t_NNx.shape[1:])


def applies(x_shape: Sequence[int], w_shape: Sequence[int], tile: int) -> bool:
    """Whether `conv3x3` handles these shapes: a 3x3 kernel and H, W multiples of the tile."""
    return (len(x_shape) == 4 and tuple(w_shape[:2]) == (3, 3)
            and x_shape[1] % tile == 0 and x_shape[2] % tile == 0)


def _check(x_shape: Sequence[int], w_shape: Sequence[int], tile: int) -> None:
    if not applies(x_shape, w_shape, tile):
        raise ValueError(f"Winograd F({tile}x{tile}, 3x3) needs a 3x3 kernel and H, W multiples of {tile}; "
                         f"got input {tuple(x_shape)} and kernel {tuple(w_shape)}.")


def input_transform(x_BxHxWxC: jax.Array, tile: int) -> jax.Array:
    """B^T x_tile B for every overlapping (tile+2)^2 tile of the input padded by 1: [(tile+2)^2, tiles, C],
    the tiles in (batch, tile row, tile column) order."""
    b, h, w, c = x_BxHxWxC.shape
    bt, _, _ = MATRICES[tile]
    m, a = tile, tile + 2
    nh, nw = h // m, w // m
    # Rows: tile row i of block n reads padded rows m*n + r, r < a, i.e. block n's m rows and the first two
    # of block n + 1. One pass writes all a transformed rows ([a, B, nh, W+m, C]).
    xp = jnp.pad(x_BxHxWxC, ((0, 0), (1, m - 1), (1, m - 1), (0, 0)))
    blocks = xp.reshape(b, nh + 1, m, w + m, c)
    rows = [blocks[:, :nh, r] if r < m else blocks[:, 1:, r - m] for r in range(a)]
    t_AxBxNHxWxC = jnp.stack([_combine(bt[i], rows) for i in range(a)])
    t_AxBxNHxWxC = lax.optimization_barrier(t_AxBxNHxWxC)  # materialise it, or every tile re-reads x
    # Columns, the same way. i major in t and j stacked second give the (i, j)-major order the products
    # need directly, with no transpose copy of 2.25x the activations.
    # Batch and tile rows as one axis: a separate batch axis of 2 makes XLA:CPU's fusion take 5x longer to
    # compile (0.7-1 s per transform).
    cols_blocks = t_AxBxNHxWxC.reshape(a, b * nh, nw + 1, m, c)
    cols = [cols_blocks[:, :, :nw, s] if s < m else cols_blocks[:, :, 1:, s - m] for s in range(a)]
    return jnp.stack([_combine(bt[j], cols) for j in range(a)], axis=1).reshape(a * a, b * nh * nw, c)


def output_transform(m_AAxNxO: jax.Array, batch: int, height: int, width: int, tile: int) -> jax.Array:
    """A^T M A for every tile: the [B, H, W, O] output from the [(tile+2)^2, tiles, O] products.

    One matrix product with kron(A^T, A^T) ([tile^2, (tile+2)^2]) and one transpose into NHWC. Written as
    row and column sums it runs up to 1.3x faster at 256 x 256 x 128 but is ~750 HLO ops per layer, which
    XLA:CPU takes ~0.7 s to compile (the decoder of FFHQ: ~10 s more)."""
    _, _, at = MATRICES[tile]
    m = tile
    nh, nw, o = height // m, width // m, m_AAxNxO.shape[-1]
    y_MxMxBxNHxNWxO = _sandwich(at, m_AAxNxO).reshape(m, m, batch, nh, nw, o)
    return y_MxMxBxNHxNWxO.transpose(2, 3, 0, 4, 1, 5).reshape(batch, height, width, o)


def conv3x3(x_BxHxWxC: jax.Array, w_3x3xCxO: jax.Array, tile: int = 4, precision: Any = None) -> jax.Array:
    """The NHWC/HWIO 3x3 convolution with stride 1 and padding 1 on every side, by Winograd F(tile, 3).

    Equals `lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)` up to
    rounding; H and W must be multiples of `tile` (see `applies`).
    """
    _check(x_BxHxWxC.shape, w_3x3xCxO.shape, tile)
    b, h, w, _ = x_BxHxWxC.shape
    v_AAxNxC = input_transform(x_BxHxWxC, tile)
    m_AAxNxO = lax.dot_general(v_AAxNxC, kernel_transform(w_3x3xCxO, tile), (((2,), (1,)), ((0,), (0,))),
                               precision=precision, preferred_element_type=jnp.float32)
    return output_transform(m_AAxNxO.astype(x_BxHxWxC.dtype), b, h, w, tile)


def kernel_grad3x3(x_BxHxWxC: jax.Array, g_BxHxWxO: jax.Array, tile: int = 4, precision: Any = None
                   ) -> jax.Array:
    """dL/dw of `conv3x3(x, w)` given dL/dy = g: the transpose of its three steps, [3, 3, C, O].

    dM = A dY A^T on the output tiles (which do not overlap), dU[t] = V[t]^T dM[t] (one [C, tiles] x
    [tiles, O] product per t: 4x fewer multiplications than the nine per-tap products of the direct
    gradient), and dw = G^T dU G.
    """
    _check(x_BxHxWxC.shape, (3, 3, *x_BxHxWxC.shape[-1:], g_BxHxWxO.shape[-1]), tile)
    b, h, w, _ = x_BxHxWxC.shape
    o = g_BxHxWxO.shape[-1]
    _, g_mat, at = MATRICES[tile]
    m, a = tile, tile + 2
    nh, nw = h // m, w // m
    # The output tiles do not overlap: dY in (p, q, tile) order, times kron(A, A), like `output_transform`.
    g_MMxNO = g_BxHxWxO.reshape(b, nh, m, nw, m, o).transpose(2, 4, 0, 1, 3, 5).reshape(m * m, -1)
    dm_AAxNxO = _sandwich(at.T, g_MMxNO).reshape(a * a, b * nh * nw, o)
    du_AAxCxO = lax.dot_general(input_transform(x_BxHxWxC, tile), dm_AAxNxO, (((1,), (1,)), ((0,), (0,))),
                                precision=precision, preferred_element_type=jnp.float32)
    return _sandwich(g_mat.T, du_AAxCxO).reshape(3, 3, *du_AAxCxO.shape[1:])
