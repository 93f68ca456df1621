"""Pieces every config file shares: the run schemas, the argument check and the CPU-sized variants.

A config file starts from `rqvae_config()` / `transformer_config(stage1)` (every key with its default,
rq_jax/config_lib.py) and spells out its paper row's recipe; `parse_arg` rejects an argument it does not
know; `runlocal` / `transformer_runlocal` shrink a config to a smoke run on a CPU (same code paths, tiny
sizes).
"""

from __future__ import annotations

import ml_collections

from rq_jax.config_lib import rqvae_config, transformer_config

__all__ = ["parse_arg", "rqvae_config", "runlocal", "transformer_config", "transformer_runlocal"]


def parse_arg(arg: str | None, *accepted: str) -> frozenset[str]:
    """The comma-separated words of `get_config(arg)` ("runlocal,50ep" -> {"runlocal", "50ep"}).

    Raises a ValueError listing the accepted words when one is unknown, so that `demo.py:runlocl` fails
    instead of silently training the full config.
    """
    words = frozenset(a.strip() for a in (arg or "").split(",") if a.strip())
    unknown = sorted(words - set(accepted))
    if unknown:
        known = ", ".join(repr(a) for a in accepted) or "none"
        raise ValueError(f"Unknown config argument(s) {', '.join(map(repr, unknown))}; accepted (comma-separated): "
                         f"{known}.")
    return words


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a stage-1 config to CPU-test size in place (32x32 digits, two steps, both GAN phases)."""
    c.model.update(dict(resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                        z_channels=32, embed_dim=32, codebook_size=64))
    f = 2 ** (len(c.model.ch_mult) - 1)
    c.model.code_shape = (32 // f, 32 // f, c.model.code_shape[2])
    c.data.name = "digits"
    c.data.image_size = 32
    c.data.limit = 256
    c.loss.perceptual_weight = 0.0
    c.loss.disc_ndf = 8
    c.loss.disc_start = 1  # step 0 without, step 1 with the discriminator: both paths run
    c.loss.disc_layers = 2
    c.loss.disc_norm = "group"
    c.train.update(dict(batch_size=8, num_steps=2, warmup_steps=1, log_every=1, image_every=2, eval_every=2,
                        eval_batches=1, checkpoint_every=2, async_checkpoints=False))
    return c


def transformer_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a stage-2 config to CPU-test size in place (its stage-1 config must be shrunk already)."""
    c.model.update(dict(d_model=64, num_heads=4, spatial_layers=2, depth_layers=1))
    c.train.update(dict(batch_size=8, num_steps=2, warmup_steps=1, log_every=1, eval_every=2, eval_batches=1,
                        sample_every=2, checkpoint_every=2, async_checkpoints=False))
    c.sample.update(dict(top_k=0, top_p=1.0, num=4))
    return c
