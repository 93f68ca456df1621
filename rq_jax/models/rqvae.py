"""RQ-VAE (Lee et al., CVPR 2022, stage 1) as a Flax NNX module.

    x [B, R, R, 3] --Encoder--> quant_conv --> z [B, h, w, C] --residual quantization (depth D,
    one shared codebook of K codes)--> zhat [B, h, w, C] --post_quant_conv--> Decoder --> x' [B, R, R, 3]

with h = w = R / f, f = 2**(len(ch_mult) - 1), code shape (h, w, D). Images are NHWC in [-1, 1].

The codebook is not a trainable parameter: it lives in `model.codebook`, a `CodebookVar` (not an
`nnx.Param`) holding a `rq_jax.quantizer.CodebookState`, so optimizers built on `nnx.Param` skip it and
it gets no gradient. Every forward returns an `RQVAEOutput` (recon, rq, codebook, last_features);
training-mode forwards never mutate the module: `forward_train(x, rng)`'s `codebook` is the EMA-updated
state and the trainer writes it back (`model.set_codebook(new_state)`, or
`nnx.update`) after its step.

Features at the bottleneck (`encode_features`' output, the quantizer, `decode_features`' input) and
the reconstructions are float32 whatever the compute dtype; the encoder/decoder run in `dtype`.

The adaptive GAN weight needs the decoder's last layer: `model.decoder.conv_out.kernel`
(`LAST_LAYER_PATH` in a state/gradient tree; `model.last_layer_kernel` returns the Param).

Config schema (`config.model`: `rqvae_model_config`, generated from the `RQVAEConfig` dataclass):
    resolution        int     square image side R (pixels)
    in_channels       int     input image channels (3)
    out_channels      int     reconstructed image channels (3)
    ch                int     base channel count
    ch_mult           tuple   channel multiplier per level; f = 2**(len(ch_mult) - 1)
    num_res_blocks    int     ResnetBlocks per encoder level (decoder levels have one more)
    attn_resolutions  tuple   resolutions (pixels of the feature map) with attention after each block
    dropout           float   dropout rate inside ResnetBlocks (training mode only)
    z_channels        int     encoder output / decoder input channels
    embed_dim         int     codebook vector size C (quant_conv output)
    code_shape        tuple   (h, w, D): must equal (R / f, R / f, depth)
    codebook_size     int     K
    dtype             str     compute dtype of encoder/decoder ("float32" or "bfloat16")
    param_dtype       str     parameter dtype ("float32")
    quantizer.decay, eps, restart, restart_threshold, update_mode, impl, commitment_reduction
                              options of `rq_jax.quantizer.rq_quantize_train` (see rq_jax.quantizer.QuantizerConfig)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rq_jax.models.layers import Decoder, Encoder, conv
from rq_jax.quantizer import (
    QUANTIZER_FIELDS,
    CodebookState,
    QuantizerConfig,
    RQOutput,
    init_codebook,
    rq_decode,
    rq_encode,
    rq_quantize,
    rq_quantize_train,
)
from rq_jax.schema import config_dict
from rq_jax.sharding import constrain

LAST_LAYER_PATH = ("decoder", "conv_out", "kernel")


class CodebookVar(nnx.Variable):
    """The RQ codebook and its EMA statistics (a `CodebookState`): explicit state, not an `nnx.Param`."""


@dataclasses.dataclass(frozen=True)
class RQVAEConfig:
    """`config.model` of an RQ-VAE (fields: the module docstring): the official 256x256 ImageNet 8x8x4 model."""

    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8,)
    dropout: float = 0.0
    z_channels: int = 256
    embed_dim: int = 256
    code_shape: tuple[int, int, int] = (8, 8, 4)
    codebook_size: int = 16384
    dtype: str = "float32"
    param_dtype: str = "float32"
    quantizer: QuantizerConfig = dataclasses.field(default_factory=QuantizerConfig)


def rqvae_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.model` for an RQ-VAE: the `RQVAEConfig` defaults with `overrides` applied.

    Top-level fields are overridden by keyword (`ch=32`); `quantizer=dict(decay=0.9)` updates only the
    named quantizer fields. Unknown names raise a ValueError.
    """
    return config_dict(RQVAEConfig(), overrides, "RQ-VAE model config")


def validate_model_config(config: Mapping[str, Any] | ml_collections.ConfigDict) -> None:
    """Raises one ValueError sentence when image size, downsampling factor and code shape disagree."""
    res, ch_mult = int(config["resolution"]), tuple(config["ch_mult"])
    code_shape = tuple(config["code_shape"])
    if len(ch_mult) < 1:
        raise ValueError("ch_mult needs at least one level.")
    f = 2 ** (len(ch_mult) - 1)
    if res < 1 or res % f:
        raise ValueError(
            f"Image resolution {res} is not divisible by the downsampling factor f={f} "
            f"(2**(len(ch_mult)-1) with ch_mult={list(ch_mult)})."
        )
    if len(code_shape) != 3 or min(code_shape) < 1:
        raise ValueError(f"code_shape must be (h, w, depth) of positive integers, got {code_shape}.")
    h = res // f
    if code_shape[:2] != (h, h):
        hint = ""
        want_f = res // code_shape[0] if res % code_shape[0] == 0 else 0
        if code_shape[0] == code_shape[1] and want_f and math.log2(want_f) % 1 == 0:
            n_levels = int(math.log2(want_f)) + 1
            hint = f"; for {code_shape[0]}x{code_shape[1]} codes use len(ch_mult) = {n_levels}"
        raise ValueError(
            f"code_shape {code_shape} does not match the {h}x{h} latent grid of a {res}x{res} image "
            f"downsampled by f={f} (len(ch_mult)={len(ch_mult)}){hint}."
        )
    for c in (config["ch"] * m for m in ch_mult):
        if c % 32:
            raise ValueError(f"Channel counts ch*ch_mult must be multiples of 32 for GroupNorm(32), got {c}.")
    if int(config["codebook_size"]) < 1 or int(config["embed_dim"]) < 1:
        raise ValueError("codebook_size and embed_dim must be positive.")


def quantizer_config(config: Mapping[str, Any] | ml_collections.ConfigDict) -> QuantizerConfig:
    """The QuantizerConfig of a `config.model`: depth from code_shape, the rest from `config.quantizer`."""
    q = dict(config["quantizer"]) if "quantizer" in config else {}
    unknown = set(q) - set(QUANTIZER_FIELDS)
    if unknown:
        known = ", ".join(QUANTIZER_FIELDS)
        raise ValueError(f"Unknown quantizer fields {sorted(unknown)}; known: {known}.")
    return QuantizerConfig(depth=int(tuple(config["code_shape"])[2]), **q)


class RQVAEOutput(NamedTuple):
    """What a forward pass of the RQ-VAE returns (evaluation or training alike)."""

    recon: jax.Array            # [B, H, W, out_channels] float32 reconstruction
    rq: RQOutput                # codes, partial sums, straight-through features, commitment loss
    codebook: CodebookState     # the new state in training (EMA update, restarts); the current one in evaluation
    last_features: jax.Array    # [B, H, W, ch*ch_mult[0]] the input of decoder.conv_out (adaptive GAN weight)


class RQVAE(nnx.Module):
    """Encoder, quant_conv, residual quantizer (explicit codebook state), post_quant_conv, Decoder."""

    def __init__(self, config: ml_collections.ConfigDict | Mapping[str, Any], *, rngs: nnx.Rngs):
        validate_model_config(config)
        dtype, param_dtype = jnp.dtype(config["dtype"]), jnp.dtype(config["param_dtype"])
        common = dict(
            ch=int(config["ch"]),
            ch_mult=tuple(int(m) for m in config["ch_mult"]),
            num_res_blocks=int(config["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in config["attn_resolutions"]),
            resolution=int(config["resolution"]),
            z_channels=int(config["z_channels"]),
            dropout=float(config["dropout"]),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        z_ch, c = int(config["z_channels"]), int(config["embed_dim"])
        self.encoder = Encoder(in_channels=int(config["in_channels"]), **common)
        self.decoder = Decoder(out_channels=int(config["out_channels"]), **common)
        conv_kw = dict(dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
        self.quant_conv = conv(z_ch, c, 1, **conv_kw)
        self.post_quant_conv = conv(c, z_ch, 1, **conv_kw)
        self.codebook = CodebookVar(init_codebook(rngs.params(), int(config["codebook_size"]), c))
        self.quantizer_config = quantizer_config(config)
        self.code_shape = tuple(int(s) for s in config["code_shape"])
        self.in_channels = int(config["in_channels"])
        self.downsample_factor = 2 ** (len(common["ch_mult"]) - 1)

    # ---- codebook state ---------------------------------------------------------------------------
    @property
    def codebook_state(self) -> CodebookState:
        """The current codebook and EMA statistics."""
        return self.codebook.get_value()

    def set_codebook(self, state: CodebookState) -> None:
        """Replaces the codebook state (what the trainer does with `forward_train`'s new state)."""
        self.codebook.set_value(CodebookState(*state))

    @property
    def last_layer_kernel(self) -> nnx.Param:
        """The decoder's conv_out kernel (kh, kw, in, out), for the adaptive GAN weight."""
        return self.decoder.conv_out.kernel

    @property
    def depth(self) -> int:
        return self.quantizer_config.depth

    # ---- encoder side -----------------------------------------------------------------------------
    def _check_images(self, x: jax.Array) -> None:
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[-1] != self.in_channels or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"Images must be NHWC [B, H, W, {self.in_channels}] with H and W divisible by f={f}, "
                f"got shape {x.shape}."
            )

    def encode_features(
        self, x_BxHxWx3: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """Continuous features z [B, H/f, W/f, embed_dim] (float32), after quant_conv."""
        self._check_images(x_BxHxWx3)
        h = self.encoder(constrain(x_BxHxWx3, "batch", None, None, None), train=train, rng=rng)
        return constrain(self.quant_conv(h.astype(jnp.float32)), "batch", None, None, None)

    def quantize(self, z_BxhxwxC: jax.Array) -> RQOutput:
        """Residual quantization of features with the current (frozen) codebook."""
        q = self.quantizer_config
        return rq_quantize(z_BxhxwxC, self.codebook_state.embedding_KxC, q.depth, impl=q.impl,
                           commitment_reduction=q.commitment_reduction)

    def encode(self, x_BxHxWx3: jax.Array) -> jax.Array:
        """Codes [B, H/f, W/f, D] (int32) of images, with the frozen codebook."""
        q = self.quantizer_config
        codes, _ = rq_encode(self.encode_features(x_BxHxWx3), self.codebook_state.embedding_KxC, q.depth,
                             impl=q.impl)
        return codes

    # ---- decoder side -----------------------------------------------------------------------------
    def decode_with_features(
        self, zq_BxhxwxC: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(images, h): `decode_features`' images and h [B, H, W, ch*ch_mult[0]] (compute dtype), the input
        of `decoder.conv_out` (images = conv_out(h)), for the adaptive GAN weight."""
        h = self.post_quant_conv(constrain(zq_BxhxwxC.astype(jnp.float32), "batch", None, None, None))
        h = self.decoder.last_features(h, train=train, rng=rng)
        return self.decoder.conv_out(h).astype(jnp.float32), h

    def decode_features(
        self, zq_BxhxwxC: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """Images [B, h*f, w*f, out_channels] (float32) from (quantized) features, via post_quant_conv."""
        return self.decode_with_features(zq_BxhxwxC, train=train, rng=rng)[0]

    def decode(self, codes_BxhxwxD: jax.Array) -> jax.Array:
        """Images from codes [B, h, w, D]: the sum of the D code vectors, decoded."""
        return self.decode_features(rq_decode(codes_BxhxwxD, self.codebook_state.embedding_KxC))

    def decode_partial(self, codes_BxhxwxD: jax.Array, depth: int) -> jax.Array:
        """Images from the first `depth` codes only (coarse-to-fine reconstructions; depth=D is decode)."""
        return self.decode_features(rq_decode(codes_BxhxwxD, self.codebook_state.embedding_KxC, depth))

    # ---- full forward -----------------------------------------------------------------------------
    def __call__(self, x_BxHxWx3: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> RQVAEOutput:
        """Evaluation: the reconstruction with the frozen codebook (`codebook` is the current state).
        With train=True: `forward_train(x, rng)`; the module itself is never mutated."""
        if train:
            return self.forward_train(x_BxHxWx3, rng)
        out = self.quantize(self.encode_features(x_BxHxWx3))
        recon, h = self.decode_with_features(out.quantized)
        return RQVAEOutput(recon, out, self.codebook_state, h)

    def forward_train(self, x_BxHxWx3: jax.Array, rng: jax.Array | None) -> RQVAEOutput:
        """Training forward: dropout on, codes searched with EMA codebook updates (and restarts).

        Returns the reconstruction, the RQOutput, the new CodebookState and the input of `decoder.conv_out`.
        Gradients reach the encoder through the straight-through `quantized` and the commitment loss,
        never the codebook. `rng` is needed for code restarts and dropout (None is fine when both are
        off). Does not mutate the module: assign the new state with `set_codebook` after the step.
        """
        q = self.quantizer_config
        rng_q = rng_enc = rng_dec = None
        if rng is not None:
            rng_q, rng_enc, rng_dec = jax.random.split(rng, 3)
        z = self.encode_features(x_BxHxWx3, train=True, rng=rng_enc)
        out, new_state = rq_quantize_train(
            z, self.codebook_state, q.depth, rng_q if q.restart else None, decay=q.decay, eps=q.eps,
            restart=q.restart, restart_threshold=q.restart_threshold, update=q.update_mode, impl=q.impl,
            commitment_reduction=q.commitment_reduction, restart_from=q.restart_from,
        )
        recon, h = self.decode_with_features(out.quantized, train=True, rng=rng_dec)
        return RQVAEOutput(recon, out, new_state, h)
