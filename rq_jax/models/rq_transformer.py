"""RQ-Transformer (Lee et al., CVPR 2022, stage 2) as a Flax NNX module, with KV-cached decoding.

The model predicts the RQ-VAE codes S [B, H, W, D] (T = H*W positions, D depths, K codes) of an image
autoregressively over (t, d), computing the same function as the official PyTorch `RQTransformer`:

- Code embeddings are the *frozen RQ-VAE codebook* vectors e(k) (C = n_z dims). The codebook is not part of
  this model: the official stage-2 `state_dict` holds no token embedding (`input_emb_vqvae` and
  `head_emb_vqvae` are on in every released config; the vectors come from the stage-1 model), so every
  method that embeds codes takes `codebook_KxC` (the RQ-VAE's `codebook_state.embedding_KxC`, K rows; the
  official K+1-row codebook with its zero padding row works too).
- Spatial transformer (`body_transformer`) over the sequence
      [cond_emb(c_i) + pos_emb_cond[i] for the L condition tokens] ++ [u_s for s = 0 .. T-2],
      u_s = sum_d input_mlp(e(S_sd)) + pos_emb_hw[s]            (input_mlp applied per depth, then summed)
  with embedding dropout on the whole sequence; its output at index L-1+t is the context h_t of position t.
- Depth transformer (`head_transformer`), batched over positions, over D inputs
      v_t0 = h_t + pos_emb_d[0],   v_td = head_mlp(sum_{d'<d} e(S_td')) + pos_emb_d[d]   (d >= 1)
- One classifier (`classifier.layer_norm` + `classifier.linear`) shared by all depths gives the logits.
- Both transformers are causal pre-LN stacks (see `transformer_layers`); no final LayerNorm.

Conditioning (`config.cond`):
- "none":  L = 1, a learned start token (`cond_emb` has one row; `cond` is ignored, pass None).
- "class": L = 1, `cond` [B] class indices into `cond_emb` (num_classes rows).
- "text":  L = text_len, `cond` [B, text_len] padded BPE tokens; the last text token predicts position 0;
           the sequence has text_len + T - 1 tokens (95 for 32 tokens and 8x8 codes). The text tokens'
           outputs at 0..L-2 also predict the next text token through `cond_classifier` (the official
           auxiliary text loss): `forward_with_cond_logits(...)` returns both.

Classifier-free guidance: with `cfg_null=True` (class or text), `cond_emb` gets one extra learned row, the
"null" token `model.null_cond_index` (num_classes, or text_vocab_size). `null_cond(batch)` is the null
condition (the null token at every text position, so for text a learned null embedding per position);
every method taking `cond` also takes `drop_cond` (bool [B]): where True the condition is replaced by the
null one (a trainer drops conditions with some probability this way; a sampler runs cond and null halves).
With `cfg_null` a trainer should leave dropped examples out of the text (cond_classifier) loss.
Official checkpoints have no null row: they convert onto `cfg_null=False` models.

Incremental decoding (pure functions of (params, cache), static shapes, traced positions):
    cache = model.init_cache(B)                                   # RQCache of zeros
    h, cache = model.spatial_prefill(cache, cond)                 # context of position 0
    for t in range(T):
        codes_BxD = ...
        for d in range(D):
            logits_BxK, cache = model.depth_step(cache, h, codes_BxD, d, codebook_KxC=cb)
            codes_BxD = codes_BxD.at[:, d].set(sample(logits_BxK))
        h, cache = model.spatial_step(cache, codes_BxD, t, codebook_KxC=cb)   # context of t + 1
`spatial_prefill` is `cond_prefix` (all condition tokens but the last; nothing for one token) followed by
`spatial_token` of the last one, and `spatial_step` is `spatial_token(cache, spatial_input(codes, t), L + t)`:
the sampler calls these pieces so its loop holds one copy of the spatial blocks (see `rq_jax.sampling`).
The cache layout: `RQCache(spatial=KVCache, depth=KVCache)`, each KVCache(k, v) of arrays [L, B, S, H, E]
(layers stacked): spatial S = cond_len + T (one spare slot, so `spatial_step` may also be called after the
last position), depth S = D (overwritten at every position; later slots are masked, no reset needed).
`logits_with_cache` runs exactly this loop with teacher forcing (lax.scan), for parity tests.

Config schema (`config.model`: `rq_transformer_model_config`, generated from the `RQTransformerConfig` dataclass):
    vocab_size       int    K, codes per depth (shared codebook)
    code_shape       tuple  (H, W, D)
    embed_dim        int    C = n_z, the RQ-VAE codebook dimension (input of input_mlp / head_mlp)
    d_model          int    transformer width (the official `embed_dim`)
    num_heads        int    attention heads (both transformers)
    spatial_layers   int    blocks of the spatial (body) transformer
    depth_layers     int    blocks of the depth (head) transformer
    mlp_ratio        int    MLP hidden width / d_model (4)
    dropout          float  residual dropout after attention proj and MLP (official resid_pdrop 0.1)
    attn_dropout     float  dropout on attention probabilities (official attn_pdrop default 0.0)
    embd_dropout     float  dropout on the spatial input sequence (official embd_pdrop default 0.0)
    cond             str    "none" | "class" | "text"
    num_classes      int    classes for cond="class"
    text_vocab_size  int    text tokens for cond="text"
    text_len         int    text tokens per caption for cond="text" (32)
    cfg_null         bool   an extra learned null condition for classifier-free guidance
    dtype            str    compute dtype of the matmuls ("float32" | "bfloat16"); logits are float32
    param_dtype      str    parameter dtype ("float32")
    remat            str    activation recomputation per block in training: "none" | "full" | "dots" |
                            "dots_no_batch" (see transformer_layers.REMAT_POLICIES)
    scan_layers      bool   run each stack's blocks as one lax.scan (compile one block; same parameters)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rq_jax.models.transformer_layers import (
    INIT_STD,
    KVCache,
    TransformerStack,
    dropout,
    layer_norm,
    linear,
)
from rq_jax.schema import config_dict
from rq_jax.sharding import constrain, logical_axes

COND_KINDS = ("none", "class", "text")


@dataclasses.dataclass(frozen=True)
class RQTransformerConfig:
    """`config.model` of an RQ-Transformer (fields: the module docstring): the official ImageNet 821M model."""

    vocab_size: int = 16384
    code_shape: tuple[int, int, int] = (8, 8, 4)
    embed_dim: int = 256
    d_model: int = 1536
    num_heads: int = 24
    spatial_layers: int = 24
    depth_layers: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.1
    attn_dropout: float = 0.0
    embd_dropout: float = 0.0
    cond: str = "class"
    num_classes: int = 1000
    text_vocab_size: int = 16384
    text_len: int = 32
    cfg_null: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False


def rq_transformer_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.model` of an RQ-Transformer: the `RQTransformerConfig` defaults (in256-...-800M), with overrides.

    Unknown field names raise a ValueError. See the module docstring for the meaning of each field.
    """
    return config_dict(RQTransformerConfig(), overrides, "RQ-Transformer config")


def validate_rq_transformer_config(config: Mapping[str, Any] | ml_collections.ConfigDict) -> None:
    """Raises one ValueError sentence for an inconsistent config."""
    if config["cond"] not in COND_KINDS:
        raise ValueError(f"Unknown conditioning {config['cond']!r}; choose one of {COND_KINDS}.")
    if config["cond"] == "none" and config["cfg_null"]:
        raise ValueError("cfg_null needs a condition (cond='class' or 'text'); an unconditional model has none.")
    if len(tuple(config["code_shape"])) != 3 or min(tuple(config["code_shape"])) < 1:
        raise ValueError(f"code_shape must be (H, W, D) of positive integers, got {tuple(config['code_shape'])}.")
    if int(config["d_model"]) % int(config["num_heads"]):
        raise ValueError(f"d_model {config['d_model']} is not divisible by num_heads {config['num_heads']}.")
    for key in ("dropout", "attn_dropout", "embd_dropout"):
        if not 0.0 <= float(config[key]) < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {config[key]}.")


class LogitsWithCond(NamedTuple):
    """A text model's teacher-forced outputs: code logits and next-text-token logits."""

    logits: jax.Array           # [B, H, W, D, K] float32
    cond_logits: jax.Array      # [B, text_len-1, V] float32


class RQCache(NamedTuple):
    """KV caches of the spatial and depth transformers (see the module docstring for the layout)."""

    spatial: KVCache
    depth: KVCache


def _normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: Any) -> nnx.Param:
    """A positional embedding [L, C] with logical axes ("length", "embed")."""
    return nnx.Param(nnx.initializers.normal(INIT_STD)(rngs.params(), shape, dtype),
                     out_sharding=("length", "embed"), eager_sharding=False)


class Classifier(nnx.Module):
    """LayerNorm + Linear to logits (float32); the official `classifier` / `cond_classifier`."""

    def __init__(self, d_model: int, num_outputs: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.layer_norm = layer_norm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.linear = linear(d_model, num_outputs, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                             axes=("embed", "vocab"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(self.layer_norm(x)).astype(jnp.float32)


class RQTransformer(nnx.Module):
    """Spatial + depth transformers over RQ codes; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict | Mapping[str, Any], *, rngs: nnx.Rngs):
        validate_rq_transformer_config(config)
        self.dtype, param_dtype = jnp.dtype(config["dtype"]), jnp.dtype(config["param_dtype"])
        self.vocab_size = int(config["vocab_size"])
        self.code_shape = tuple(int(s) for s in config["code_shape"])
        self.embed_dim, self.d_model = int(config["embed_dim"]), int(config["d_model"])
        self.cond_kind, self.cfg_null = str(config["cond"]), bool(config["cfg_null"])
        self.embd_dropout = float(config["embd_dropout"])
        self.dropout_rates = (float(config["dropout"]), float(config["attn_dropout"]), self.embd_dropout)
        h, w, depth = self.code_shape
        self.num_positions = h * w
        if self.cond_kind == "none":
            self.cond_len, cond_rows = 1, 1
        elif self.cond_kind == "class":
            self.cond_len, cond_rows = 1, int(config["num_classes"])
        else:
            self.cond_len, cond_rows = int(config["text_len"]), int(config["text_vocab_size"])
        self.null_cond_index = cond_rows if self.cfg_null else None
        c, kw = self.d_model, dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)

        self.cond_emb = nnx.Embed(
            cond_rows + int(self.cfg_null), c, param_dtype=param_dtype,
            embedding_init=logical_axes(nnx.initializers.normal(INIT_STD), "classes", "embed"), rngs=rngs,
        )
        self.pos_emb_cond = _normal_param(rngs, (self.cond_len, c), param_dtype)
        self.pos_emb_hw = _normal_param(rngs, (self.num_positions, c), param_dtype)
        self.pos_emb_d = _normal_param(rngs, (depth, c), param_dtype)
        self.input_mlp = linear(self.embed_dim, c, axes=("code_dim", "embed"), **kw)
        self.head_mlp = linear(self.embed_dim, c, axes=("code_dim", "embed"), **kw)
        stack_kw = dict(
            mlp_ratio=int(config["mlp_ratio"]), attn_dropout=float(config["attn_dropout"]),
            resid_dropout=float(config["dropout"]), remat=str(config.get("remat", "none")),
            scan_layers=bool(config.get("scan_layers", False)), **kw,
        )
        num_heads = int(config["num_heads"])
        self.body_transformer = TransformerStack(int(config["spatial_layers"]), c, num_heads, **stack_kw)
        self.head_transformer = TransformerStack(int(config["depth_layers"]), c, num_heads, **stack_kw)
        self.classifier = Classifier(c, self.vocab_size, **kw)
        self.cond_classifier = Classifier(c, cond_rows, **kw) if self.cond_kind == "text" else None

    # ---- conditions -------------------------------------------------------------------------------
    @property
    def spatial_len(self) -> int:
        """Length of the spatial transformer's input sequence: cond_len + T - 1."""
        return self.cond_len + self.num_positions - 1

    def null_cond(self, batch: int) -> jax.Array:
        """The null condition for classifier-free guidance: [B] (class) or [B, text_len] (text)."""
        if self.null_cond_index is None:
            raise ValueError("This model has no null condition: build it with cfg_null=True (class or text).")
        shape = (batch,) if self.cond_kind == "class" else (batch, self.cond_len)
        return jnp.full(shape, self.null_cond_index, jnp.int32)

    def _cond_tokens(self, cond: jax.Array | None, batch: int, drop_cond: jax.Array | None) -> jax.Array:
        """The condition as token ids [B, cond_len], with dropped rows replaced by the null token."""
        if self.cond_kind == "none":
            if drop_cond is not None:
                raise ValueError("drop_cond needs a conditional model with cfg_null=True.")
            return jnp.zeros((batch, 1), jnp.int32)
        if cond is None:
            raise ValueError(f"A cond={self.cond_kind!r} model needs `cond` (class labels or text tokens).")
        want = (batch,) if self.cond_kind == "class" else (batch, self.cond_len)
        if tuple(cond.shape) != want:
            raise ValueError(f"cond has shape {tuple(cond.shape)}, expected {want} for cond={self.cond_kind!r}.")
        tokens = jnp.asarray(cond, jnp.int32).reshape(batch, self.cond_len)
        if drop_cond is not None:
            if self.null_cond_index is None:
                raise ValueError("drop_cond needs a model built with cfg_null=True.")
            drop = jnp.asarray(drop_cond, bool).reshape(batch, 1)
            tokens = jnp.where(drop, self.null_cond_index, tokens)
        return tokens

    def embed_cond(self, cond: jax.Array | None, batch: int, drop_cond: jax.Array | None = None) -> jax.Array:
        """cond_emb(tokens) + pos_emb_cond: the first cond_len tokens of the spatial sequence [B, L, C]."""
        tokens = self._cond_tokens(cond, batch, drop_cond)
        emb = self.cond_emb.embedding[...][tokens]
        return (emb + self.pos_emb_cond[...][None]).astype(jnp.float32)

    # ---- code embeddings --------------------------------------------------------------------------
    def _code_vectors(self, codes: jax.Array, codebook_KxC: jax.Array) -> jax.Array:
        if codebook_KxC.ndim != 2 or codebook_KxC.shape[1] != self.embed_dim:
            raise ValueError(
                f"codebook_KxC has shape {tuple(codebook_KxC.shape)}; expected (K, {self.embed_dim}) (the RQ-VAE "
                "codebook, embed_dim columns)."
            )
        return jnp.take(codebook_KxC.astype(jnp.float32), codes, axis=0)

    def embed_codes_spatial(self, codes_BxTxD: jax.Array, codebook_KxC: jax.Array) -> jax.Array:
        """sum_d input_mlp(e(S_td)) [B, T, C] (no positional embedding)."""
        e_BxTxDxC = self._code_vectors(codes_BxTxD, codebook_KxC)
        return self.input_mlp(e_BxTxDxC).astype(jnp.float32).sum(axis=-2)

    def embed_codes_depth(self, codes_BxTxD: jax.Array, codebook_KxC: jax.Array) -> jax.Array:
        """head_mlp(sum_{d'<=d} e(S_td')) [B, T, D, C]: entry d is the depth input of d + 1."""
        e_BxTxDxC = self._code_vectors(codes_BxTxD, codebook_KxC)
        return self.head_mlp(jnp.cumsum(e_BxTxDxC, axis=-2)).astype(jnp.float32)

    # ---- full (teacher-forced) forward ------------------------------------------------------------
    def __call__(
        self,
        codes_BxHxWxD: jax.Array,
        cond: jax.Array | None = None,
        *,
        codebook_KxC: jax.Array,
        train: bool = False,
        rng: jax.Array | None = None,
        drop_cond: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, H, W, D, K] (float32) of every code given the earlier ones (teacher forcing).

        `codes_BxHxWxD` may have fewer rows H than the model's code shape (a prefix). `train=True` turns
        dropout on and needs `rng` (a PRNG key) when any dropout rate is positive.
        """
        return self._teacher_forced(codes_BxHxWxD, cond, codebook_KxC, train, rng, drop_cond)[0]

    def forward_with_cond_logits(
        self,
        codes_BxHxWxD: jax.Array,
        cond: jax.Array,
        *,
        codebook_KxC: jax.Array,
        train: bool = False,
        rng: jax.Array | None = None,
        drop_cond: jax.Array | None = None,
    ) -> LogitsWithCond:
        """`__call__`'s logits and, from the same pass, the next-text-token logits [B, text_len-1, V] of the
        text tokens' outputs (text models only: the official auxiliary text loss)."""
        if self.cond_classifier is None:
            raise ValueError("forward_with_cond_logits needs a text-conditioned model (cond='text').")
        logits, out_BxSxC = self._teacher_forced(codes_BxHxWxD, cond, codebook_KxC, train, rng, drop_cond)
        return LogitsWithCond(logits, self.cond_classifier(out_BxSxC[:, : self.cond_len - 1]))

    def _teacher_forced(self, codes_BxHxWxD, cond, codebook_KxC, train, rng, drop_cond):
        """(logits [B, H, W, D, K], the spatial transformer's outputs [B, S, C])."""
        b, h, w, d = codes_BxHxWxD.shape
        if w != self.code_shape[1] or d != self.code_shape[2] or h > self.code_shape[0]:
            raise ValueError(f"codes have shape {codes_BxHxWxD.shape[1:]}, expected {self.code_shape} (or fewer rows).")
        if train and rng is None and max(self.dropout_rates) > 0:
            raise ValueError("Dropout in training mode needs a PRNG key: pass rng=..., or set the dropout rates to 0.")
        rng_embd, rng_body, rng_head = (None,) * 3 if not train or rng is None else tuple(jax.random.split(rng, 3))
        t = h * w
        codes_BxTxD = codes_BxHxWxD.reshape(b, t, d)

        x_BxTxC = self.embed_codes_spatial(codes_BxTxD, codebook_KxC) + self.pos_emb_hw[...][:t]
        seq_BxSxC = jnp.concatenate([self.embed_cond(cond, b, drop_cond), x_BxTxC[:, :-1]], axis=1)
        seq_BxSxC = constrain(dropout(seq_BxSxC, self.embd_dropout, rng_embd), "batch", "length", "embed_act")
        out_BxSxC = constrain(self.body_transformer(seq_BxSxC, rng=rng_body), "batch", "length", "embed_act")
        ctx_BxTxC = out_BxSxC[:, self.cond_len - 1:]

        depth_in = jnp.concatenate(
            [ctx_BxTxC[:, :, None], self.embed_codes_depth(codes_BxTxD, codebook_KxC)[:, :, :-1]], axis=2
        ) + self.pos_emb_d[...][:d]
        depth_in = constrain(depth_in.reshape(b * t, d, self.d_model), "batch", "length", "embed_act")
        head_out = constrain(self.head_transformer(depth_in, rng=rng_head), "batch", "length", "embed_act")
        logits = constrain(self.classifier(head_out).reshape(b, h, w, d, self.vocab_size),
                           "batch", None, None, None, "vocab")
        return logits, out_BxSxC

    # ---- incremental decoding with KV caches ------------------------------------------------------
    def init_cache(self, batch: int, dtype: Any = None) -> RQCache:
        """Zero KV caches for `batch` sequences (dtype defaults to the compute dtype)."""
        dtype = self.dtype if dtype is None else dtype
        return RQCache(
            self.body_transformer.init_cache(batch, self.cond_len + self.num_positions, dtype),
            self.head_transformer.init_cache(batch, self.code_shape[2], dtype),
        )

    def spatial_prefill(
        self, cache: RQCache, cond: jax.Array | None, *, drop_cond: jax.Array | None = None
    ) -> tuple[jax.Array, RQCache]:
        """Runs the cond_len condition tokens; returns the context h_0 [B, C] of position 0 and the cache."""
        x_BxC, cache = self.cond_prefix(cache, cond, drop_cond=drop_cond)
        return self.spatial_token(cache, x_BxC, self.cond_len - 1)

    def cond_prefix(
        self, cache: RQCache, cond: jax.Array | None, *, drop_cond: jax.Array | None = None
    ) -> tuple[jax.Array, RQCache]:
        """Runs all condition tokens but the last; returns the last one's input [B, C] and the cache.

        `spatial_token(cache, x, cond_len - 1)` then gives h_0. With one condition token (cond "none" or
        "class") nothing runs, so a sampler's loop can feed every token, the last condition token included,
        through one compiled `spatial_token` (one copy of the spatial blocks in the program, not two).
        """
        batch = cache.spatial.k_LxBxSxHxE.shape[1]
        x_BxLxC = self.embed_cond(cond, batch, drop_cond)
        spatial = cache.spatial
        if self.cond_len > 1:
            _, spatial = self.body_transformer.cached(x_BxLxC[:, :-1], spatial, 0)
        return x_BxLxC[:, -1], RQCache(spatial, cache.depth)

    def spatial_input(self, codes_BxD: jax.Array, t: jax.Array | int, *, codebook_KxC: jax.Array) -> jax.Array:
        """The spatial transformer's input [B, C] for the codes of position t: sum_d input_mlp(e) + pos_emb_hw[t].

        `t` may be traced (0 <= t < T; clamped, so t = T - 1's unused successor is harmless)."""
        t = jnp.asarray(t, jnp.int32)
        x_BxC = self.embed_codes_spatial(codes_BxD[:, None], codebook_KxC)[:, 0]
        return x_BxC + jax.lax.dynamic_index_in_dim(self.pos_emb_hw[...], jnp.minimum(t, self.num_positions - 1), 0,
                                                    False)

    def spatial_token(self, cache: RQCache, x_BxC: jax.Array, slot: jax.Array | int) -> tuple[jax.Array, RQCache]:
        """One token [B, C] at sequence index `slot` through the spatial transformer; returns its output [B, C]
        (the context of the position it predicts) and the cache."""
        out, spatial = self.body_transformer.cached(x_BxC[:, None], cache.spatial, slot)
        return out[:, 0], RQCache(spatial, cache.depth)

    def spatial_step(
        self, cache: RQCache, codes_BxD: jax.Array, t: jax.Array | int, *, codebook_KxC: jax.Array
    ) -> tuple[jax.Array, RQCache]:
        """Feeds the (sampled) codes of position t; returns the context h_{t+1} [B, C] and the cache.

        `t` may be traced (0 <= t < T); with t = T - 1 the result is unused but harmless (spare slot).
        """
        x_BxC = self.spatial_input(codes_BxD, t, codebook_KxC=codebook_KxC)
        return self.spatial_token(cache, x_BxC, self.cond_len + jnp.asarray(t, jnp.int32))

    def depth_step(
        self, cache: RQCache, h_BxC: jax.Array, codes_BxD: jax.Array, d: jax.Array | int, *,
        codebook_KxC: jax.Array,
    ) -> tuple[jax.Array, RQCache]:
        """Logits [B, K] (float32) of depth d at the current position, and the cache.

        `h_BxC` is the position's spatial context; `codes_BxD` holds the codes already chosen at this
        position (entries >= d are ignored). `d` may be traced; call d = 0, 1, ..., D-1 in order.
        """
        depth = self.code_shape[2]
        d = jnp.asarray(d, jnp.int32)
        e_BxDxC = self._code_vectors(codes_BxD, codebook_KxC)
        earlier_D = (jnp.arange(depth) < d).astype(jnp.float32)
        cum_BxC = jnp.sum(e_BxDxC * earlier_D[None, :, None], axis=1)
        code_in = self.head_mlp(cum_BxC).astype(jnp.float32)
        v_BxC = jnp.where(d == 0, h_BxC.astype(jnp.float32), code_in)
        v_BxC = v_BxC + jax.lax.dynamic_index_in_dim(self.pos_emb_d[...], d, 0, False)
        out, depth_cache = self.head_transformer.cached(v_BxC[:, None], cache.depth, d)
        return self.classifier(out[:, 0]), RQCache(cache.spatial, depth_cache)


@nnx.jit
def _logits_with_cache(
    model: RQTransformer, codes_BxTxD: jax.Array, cond: jax.Array | None, codebook_KxC: jax.Array,
    drop_cond: jax.Array | None,
) -> jax.Array:
    b, t, depth = codes_BxTxD.shape
    cache = model.init_cache(b)
    h0, cache = model.spatial_prefill(cache, cond, drop_cond=drop_cond)

    def position(carry, inputs):
        cache, h_BxC = carry
        pos, codes_BxD = inputs

        def depth_body(cache, d):
            logits_BxK, cache = model.depth_step(cache, h_BxC, codes_BxD, d, codebook_KxC=codebook_KxC)
            return cache, logits_BxK

        cache, logits_DxBxK = jax.lax.scan(depth_body, cache, jnp.arange(depth))
        h_next, cache = model.spatial_step(cache, codes_BxD, pos, codebook_KxC=codebook_KxC)
        return (cache, h_next), logits_DxBxK

    _, logits_TxDxBxK = jax.lax.scan(position, (cache, h0), (jnp.arange(t), jnp.swapaxes(codes_BxTxD, 0, 1)))
    return jnp.transpose(logits_TxDxBxK, (2, 0, 1, 3))


def logits_with_cache(
    model: RQTransformer,
    codes_BxHxWxD: jax.Array,
    cond: jax.Array | None,
    codebook_KxC: jax.Array,
    *,
    drop_cond: jax.Array | None = None,
) -> jax.Array:
    """All logits [B, H, W, D, K] computed step by step through the KV-cached path (teacher forcing).

    Runs the sampler's loop (prefill, then for each position D `depth_step`s and one `spatial_step`)
    feeding the given codes instead of samples; equals `model(codes, cond, codebook_KxC=...)` up to
    float rounding. Jitted.
    """
    b, h, w, d = codes_BxHxWxD.shape
    if (h, w, d) != model.code_shape:
        raise ValueError(f"codes have shape {(h, w, d)}, expected the model's code shape {model.code_shape}.")
    codes = jnp.asarray(codes_BxHxWxD, jnp.int32).reshape(b, h * w, d)
    logits = _logits_with_cache(model, codes, cond, jnp.asarray(codebook_KxC), drop_cond)
    return logits.reshape(b, h, w, d, -1)
