"""RQ-VAE on the embedded dataset (emoji, or digits without the font): the offline demo.

  python -m rq_jax.train --config configs/rqvae/demo.py --workdir /tmp/rqvae_demo
  python -m rq_jax.train --config configs/rqvae/demo.py:runlocal --workdir /tmp/rqvae_tiny

32x32 images -> 8x8x4 codes from a shared codebook of 128 codes (f = 4), trained in a few minutes
on a 2-core CPU. No LPIPS (its weights are a download) and the PatchGAN starts late and weak,
since with so few steps the L1 term does the work.

The codebook is updated once per step from the residuals of all four depths pooled, and codes that get
less than 1/8 of an average code's share (EMA count < 4 of ~32 vectors per code and step) are restarted
on residuals of the depth that used the fewest distinct codes in the batch (`restart_from`). Deep
residuals are small and crowd onto a few small codes: with the official per-depth order and threshold 1
depths 3-4 used about half of the codebook or less (90/80/50/44% at depths 1-4 on the held-out set).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "runlocal" (CPU-sized smoke run) or nothing."""
    args = common.parse_arg(arg, "runlocal")
    c = common.rqvae_config()
    c.model.update(dict(resolution=32, ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(),
                        z_channels=64, embed_dim=64, code_shape=(8, 8, 4), codebook_size=128))
    c.model.quantizer.decay = 0.99
    c.model.quantizer.update_mode = "once"
    c.model.quantizer.restart_threshold = 4.0
    c.model.quantizer.restart_from = "least_used_depth"
    c.data.name = "embedded"
    c.data.image_size = 32
    c.data.random_flip = False  # emoji include text-like symbols
    c.data.skin_tones = False  # 3,881 -> 1,991 images: the 5 skin-tone copies made "people & body" 59% of the set
    c.loss.recon = "l1"
    c.loss.beta = 0.25
    c.loss.perceptual_weight = 0.0
    c.loss.adv_weight = 0.1
    c.loss.disc_start = 850
    c.loss.disc_norm = "group"
    c.loss.disc_ndf = 32
    c.train.batch_size = 16
    c.train.num_steps = 1000
    c.train.lr = 1e-3
    c.train.disc_lr = 1e-4
    c.train.b1, c.train.b2 = 0.5, 0.9
    c.train.weight_decay = 0.0
    c.train.grad_clip = 0.0
    c.train.warmup_steps = 100
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.image_every = 500
    c.train.checkpoint_every = 500
    c.train.eval_batches = 4
    if "runlocal" in args:
        common.runlocal(c)
    return c
