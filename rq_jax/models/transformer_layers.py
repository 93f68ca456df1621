"""Pre-LN causal transformer blocks with preallocated KV caches (Flax NNX), as in the official RQ-Transformer.

A block computes, as the official `AttentionBlock` (minGPT lineage):

    x = x + resid_drop(proj(attn_drop(softmax(q k^T / sqrt(E) + causal)) v))   with q, k, v of ln1(x)
    x = x + resid_drop(fc2(gelu_erf(fc1(ln2(x)))))

with separate `query`/`key`/`value`/`proj` linear layers with biases, LayerNorm eps 1e-5, an MLP of width
`mlp_ratio * d_model` and exact (erf) GELU. There is no final LayerNorm on a stack. Attribute names mirror
the official `state_dict` names (`blocks.{i}.ln1`, `attn.query`, ...) except the MLP's `fc1`/`fc2`, which
are the official `mlp.0`/`mlp.2` (see `rq_jax.convert.rq_transformer`).

Two ways to run a stack:
- `__call__(x_BxSxC)`: the whole (causal) sequence at once, with dropout in training mode;
- `cached(x_BxSxC, cache, start)`: S new tokens at sequence positions start .. start+S-1 (start may be a
  traced int) attend to everything already in `cache` plus themselves. The cache is a `KVCache` of
  preallocated arrays [L, B, S_max, H, E] (layers stacked), written with `lax.dynamic_update_slice`, so
  shapes are static and a `lax.scan`/`fori_loop` sampler can carry it. Cache slots after the current
  position are masked out, so stale or zero entries there never matter (no reset needed between uses).
  No dropout on the cached path (it is for inference).

Numerics: attention logits and softmax in float32; LayerNorms in float32 so the residual stream is float32;
matmuls in `dtype` (bfloat16 for mixed precision).

Initialisation: GPT-style, normal(0.02) weights, zero biases, LayerNorm scale 1 (the official code defines
this `_init_weights` but never applies it; no official stage-2 training code was released).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rq_jax.sharding import logical_axes

Dtype = Any

LN_EPS = 1e-5
INIT_STD = 0.02
_NEG = -1e30  # masked attention logit; finite so a fully masked row would not produce NaN gradients


class KVCache(NamedTuple):
    """Keys and values of every layer of one transformer stack: arrays [L, B, S_max, H, E]."""

    k_LxBxSxHxE: jax.Array
    v_LxBxSxHxE: jax.Array

    @property
    def max_len(self) -> int:
        return self.k_LxBxSxHxE.shape[2]


def init_kv_cache(
    num_layers: int, batch: int, max_len: int, num_heads: int, head_dim: int, dtype: Dtype = jnp.float32
) -> KVCache:
    """A zero cache for `num_layers` layers, `batch` sequences of up to `max_len` tokens."""
    shape = (num_layers, batch, max_len, num_heads, head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def linear(
    in_features: int, out_features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs,
    axes: tuple[str | None, str | None] = ("embed", None),
) -> nnx.Linear:
    """A biased nnx.Linear (kernel (in, out)) with GPT-style normal(0.02) init and zero bias.

    `axes` are the logical names of the kernel's (in, out) dimensions (the bias gets the out name);
    `rq_jax.sharding` maps them onto the mesh.
    """
    return nnx.Linear(
        in_features, out_features, use_bias=True, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical_axes(nnx.initializers.normal(INIT_STD), *axes),
        bias_init=logical_axes(nnx.initializers.zeros_init(), axes[1]), rngs=rngs,
    )


def layer_norm(features: int, *, param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """torch.nn.LayerNorm(features) (eps 1e-5, two-pass variance), computed in float32."""
    return nnx.LayerNorm(
        features, epsilon=LN_EPS, use_fast_variance=False, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs
    )


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout with keep probability 1 - rate; identity when rate is 0 or `rng` is None."""
    if rate <= 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def _split(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    return [None] * n if rng is None else list(jax.random.split(rng, n))


class SelfAttention(nnx.Module):
    """Multi-head causal self-attention with separate biased q/k/v/proj projections."""

    def __init__(
        self, d_model: int, num_heads: int, *, attn_dropout: float, resid_dropout: float, dtype: Dtype,
        param_dtype: Dtype, rngs: nnx.Rngs,
    ):
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}.")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.attn_dropout, self.resid_dropout = attn_dropout, resid_dropout
        self.key = linear(d_model, d_model, axes=("embed", "heads"), **kw)
        self.query = linear(d_model, d_model, axes=("embed", "heads"), **kw)
        self.value = linear(d_model, d_model, axes=("embed", "heads"), **kw)
        self.proj = linear(d_model, d_model, axes=("heads", "embed"), **kw)

    def _heads(self, x_BxSxC: jax.Array) -> jax.Array:
        b, s, _ = x_BxSxC.shape
        return x_BxSxC.reshape(b, s, self.num_heads, self.head_dim)

    def _attend(
        self, q_BxSxHxE: jax.Array, k_BxLxHxE: jax.Array, v_BxLxHxE: jax.Array, mask_BxSxL: jax.Array,
        rng: jax.Array | None,
    ) -> jax.Array:
        b, s = q_BxSxHxE.shape[:2]
        scale = 1.0 / (self.head_dim**0.5)
        logits_BxHxSxL = jnp.einsum(
            "bshe,blhe->bhsl", q_BxSxHxE, k_BxLxHxE * jnp.asarray(scale, k_BxLxHxE.dtype),
            preferred_element_type=jnp.float32,
        )
        logits_BxHxSxL = jnp.where(mask_BxSxL[:, None], logits_BxHxSxL, _NEG)
        probs = jax.nn.softmax(logits_BxHxSxL, axis=-1)
        probs = dropout(probs, self.attn_dropout, rng).astype(v_BxLxHxE.dtype)
        y_BxSxHxE = jnp.einsum("bhsl,blhe->bshe", probs, v_BxLxHxE)
        return self.proj(y_BxSxHxE.reshape(b, s, self.num_heads * self.head_dim))

    def __call__(self, x_BxSxC: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        """Causal attention over the whole sequence (dropout when `rng` is given)."""
        b, s, _ = x_BxSxC.shape
        q, k, v = (self._heads(f(x_BxSxC)) for f in (self.query, self.key, self.value))
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((s, s), bool)), (b, s, s))
        rng_attn, rng_resid = _split(rng, 2)
        return dropout(self._attend(q, k, v, mask, rng_attn), self.resid_dropout, rng_resid)

    def cached(
        self, x_BxSxC: jax.Array, cache: KVCache, layer: int, start: jax.Array | int
    ) -> tuple[jax.Array, KVCache]:
        """S new tokens at positions start.. attend to the cache slots <= their own position.

        Writes their keys/values into layer `layer` of the stacked `cache` (only the S new rows) and
        returns (output [B, S, C], updated cache).
        """
        b, s, _ = x_BxSxC.shape
        q, k, v = (self._heads(f(x_BxSxC)) for f in (self.query, self.key, self.value))
        start = jnp.asarray(start, jnp.int32)
        zero = jnp.zeros((), jnp.int32)
        idx = (jnp.asarray(layer, jnp.int32), zero, start, zero, zero)
        k_all = jax.lax.dynamic_update_slice(cache.k_LxBxSxHxE, k[None].astype(cache.k_LxBxSxHxE.dtype), idx)
        v_all = jax.lax.dynamic_update_slice(cache.v_LxBxSxHxE, v[None].astype(cache.v_LxBxSxHxE.dtype), idx)
        max_len = cache.max_len
        mask_SxM = jnp.arange(max_len)[None, :] <= (start + jnp.arange(s))[:, None]
        mask = jnp.broadcast_to(mask_SxM, (b, s, max_len))
        out = self._attend(q, k_all[layer].astype(q.dtype), v_all[layer].astype(q.dtype), mask, None)
        return out, KVCache(k_all, v_all)


class MLP(nnx.Module):
    """fc2(gelu_erf(fc1(x))): the official `mlp.0` / `mlp.2` (residual dropout applied by the caller)."""

    def __init__(self, d_model: int, hidden: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = linear(d_model, hidden, axes=("embed", "mlp"), **kw)
        self.fc2 = linear(hidden, d_model, axes=("mlp", "embed"), **kw)

    def __call__(self, x_BxSxC: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x_BxSxC), approximate=False))


class Block(nnx.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(
        self, d_model: int, num_heads: int, *, mlp_ratio: int, attn_dropout: float, resid_dropout: float,
        dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs,
    ):
        self.resid_dropout = resid_dropout
        self.ln1 = layer_norm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.ln2 = layer_norm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.attn = SelfAttention(
            d_model, num_heads, attn_dropout=attn_dropout, resid_dropout=resid_dropout, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs,
        )
        self.mlp = MLP(d_model, mlp_ratio * d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x_BxSxC: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        rng_attn, rng_mlp = _split(rng, 2)
        x = x_BxSxC + self.attn(self.ln1(x_BxSxC), rng=rng_attn)
        return x + dropout(self.mlp(self.ln2(x)), self.resid_dropout, rng_mlp)

    def cached(
        self, x_BxSxC: jax.Array, cache: KVCache, layer: int, start: jax.Array | int
    ) -> tuple[jax.Array, KVCache]:
        a, cache = self.attn.cached(self.ln1(x_BxSxC), cache, layer, start)
        x = x_BxSxC + a
        return x + self.mlp(self.ln2(x)), cache


REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def _remat_policy(name: str):
    """jax.checkpoint policy: "full" saves nothing (recompute every block), "dots" saves matmul outputs,
    "dots_no_batch" saves matmuls without batch dimensions (weights x activations)."""
    return {"full": None, "dots": jax.checkpoint_policies.dots_saveable,
            "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


class TransformerStack(nnx.Module):
    """`num_layers` causal pre-LN blocks (the official `AttentionStack`); no final LayerNorm.

    Memory switches for big models, training path only (the results are the same, to float rounding):
    `remat` recomputes each block's activations in the backward pass (`jax.checkpoint` with a policy from
    REMAT_POLICIES), and `scan_layers` runs the blocks as one `lax.scan` over their stacked parameters, so
    XLA compiles one block instead of L (compile time and program size independent of depth). The
    parameters stay one module per block either way (`blocks.{i}...`, as the official names), so
    checkpoints and converted weights do not depend on these switches; with scanning, the stacked copy of
    the block weights is made inside the jitted step and carries the same sharding.
    """

    def __init__(
        self, num_layers: int, d_model: int, num_heads: int, *, mlp_ratio: int, attn_dropout: float,
        resid_dropout: float, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs, remat: str = "none",
        scan_layers: bool = False,
    ):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"Unknown remat policy {remat!r}; choose one of {REMAT_POLICIES}.")
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, d_model // num_heads
        self.remat, self.scan_layers = remat, bool(scan_layers)
        self.blocks = nnx.List([
            Block(d_model, num_heads, mlp_ratio=mlp_ratio, attn_dropout=attn_dropout,
                  resid_dropout=resid_dropout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for _ in range(num_layers)
        ])

    def __call__(self, x_BxSxC: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        """The whole causal sequence; dropout on when `rng` is given (block i uses fold_in(rng, i))."""
        if self.num_layers == 0:
            return x_BxSxC
        graph = nnx.graphdef(self.blocks[0])
        states = [nnx.state(b) for b in self.blocks]

        def apply(state, x, i):
            block = nnx.merge(graph, state)
            return block(x, rng=None if rng is None else jax.random.fold_in(rng, i))

        if self.remat != "none":
            apply = jax.checkpoint(apply, policy=_remat_policy(self.remat))
        if not self.scan_layers:
            for i, state in enumerate(states):
                x_BxSxC = apply(state, x_BxSxC, i)
            return x_BxSxC
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        x_BxSxC, _ = jax.lax.scan(lambda x, si: (apply(si[0], x, si[1]), None), x_BxSxC,
                                  (stacked, jnp.arange(self.num_layers)))
        return x_BxSxC

    def init_cache(self, batch: int, max_len: int, dtype: Dtype = jnp.float32) -> KVCache:
        """A zero KVCache for this stack."""
        return init_kv_cache(self.num_layers, batch, max_len, self.num_heads, self.head_dim, dtype)

    def cached(self, x_BxSxC: jax.Array, cache: KVCache, start: jax.Array | int) -> tuple[jax.Array, KVCache]:
        """Tokens at positions start .. start+S-1 through every layer, reading and writing `cache`."""
        for i, block in enumerate(self.blocks):
            x_BxSxC, cache = block.cached(x_BxSxC, cache, i, start)
        return x_BxSxC, cache
