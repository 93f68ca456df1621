"""RQ-VAE, FFHQ 256x256 8x8x4, K=2048 (150 epochs; the released weights).

  python -m rq_jax.train --config configs/rqvae/ffhq_8x8x4.py --workdir ./workdirs/rqvae_ffhq \
      --config.data.folder=/data/ffhq/images1024x1024
  python -m rq_jax.train --config configs/rqvae/ffhq_8x8x4.py:runlocal --workdir /tmp/ffhq_tiny

Recipe: App. A of the paper (150 epochs, lr 4e-5, 5 warm-up epochs, K = 2048); the model is the ImageNet
8x8x4 RQ-VAE with attention at 16x16 only, as in the released checkpoint.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "runlocal" (CPU-sized) or nothing."""
    args = common.parse_arg(arg, "runlocal")
    c = common.rqvae_config()

    # Model: VQGAN's encoder/decoder plus the paper's extra block (six levels, f = 32): 256x256 -> 8x8.
    c.model.resolution = 256
    c.model.ch = 128
    c.model.ch_mult = (1, 1, 2, 2, 4, 4)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)  # the released FFHQ model: attention at 16x16, none at 8x8
    c.model.dropout = 0.0
    c.model.z_channels = 256
    c.model.embed_dim = 256  # n_z

    # Codebook: K = 2048 codes shared by the 4 depths; EMA updates, unused codes restarted.
    c.model.code_shape = (8, 8, 4)
    c.model.codebook_size = 2048
    c.model.quantizer.decay = 0.99
    c.model.quantizer.restart = True

    # Loss: L1 + beta * commitment + LPIPS + adaptive-weighted PatchGAN from the first step.
    c.loss.recon = "l1"
    c.loss.beta = 0.25
    c.loss.perceptual_weight = 1.0
    c.loss.adv_weight = 0.75
    c.loss.disc_start = 0

    # Optimizer: Adam(0.5, 0.9), lr 4e-5 after a linear warm-up of 5 epochs, then constant.
    c.train.lr = 4e-5
    c.train.disc_lr = 4e-5
    c.train.b1, c.train.b2 = 0.5, 0.9
    c.train.weight_decay = 0.0
    c.train.warmup_epochs = 5.0
    c.train.grad_clip = 0.0  # none
    c.train.batch_size = 128
    c.train.num_epochs = 150.0

    c.data.name = "folder"
    c.data.folder = "/path/to/ffhq/images1024x1024"
    c.data.image_size = 256
    c.data.min_crop_scale = 0.75

    if "runlocal" in args:
        common.runlocal(c)
    return c
