"""RQ-VAE, LSUN-church 256x256 8x8x4: the ImageNet RQ-VAE finetuned for one epoch at lr 4e-6 (App. A).

  python -m rq_jax.train --config configs/rqvae/lsun_church.py --workdir ./workdirs/rqvae_lsun_church \
      --config.init_from=./workdirs/rqvae_imagenet_8x8x4/checkpoints
  python -m rq_jax.train --config configs/rqvae/lsun_church.py:runlocal --workdir /tmp/lsun_tiny

The model, codebook and losses are those of configs/rqvae/imagenet_8x8x4.py (its weights are the start);
the last 5,000 training images are held out for evaluation.
"""

import ml_collections

from configs import common
from configs.rqvae import imagenet_8x8x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "runlocal" (CPU-sized) or nothing."""
    return finetuned("church", arg)


def finetuned(category: str, arg: str | None) -> ml_collections.ConfigDict:
    """The LSUN recipe for `category` ("church", "cat", "bedroom": the three rows differ only in the data)."""
    args = common.parse_arg(arg, "runlocal")
    c = imagenet_8x8x4.get_config()  # model (8x8x4, K = 16384), codebook, losses, Adam(0.5, 0.9), batch 128
    c.init_from = "./workdirs/rqvae_imagenet_8x8x4/checkpoints"

    # Finetuning: one epoch at a tenth of the ImageNet learning rate, no warm-up.
    c.train.lr = 4e-6
    c.train.disc_lr = 4e-6
    c.train.warmup_epochs = 0.0
    c.train.num_epochs = 1.0

    c.data.name = "tfds"
    c.data.tfds_name = f"lsun/{category}"
    c.data.tfds_train_split = "train[:-5000]"
    c.data.tfds_eval_split = "train[-5000:]"
    c.data.image_size = 256

    if "runlocal" in args:
        common.runlocal(c)
        c.init_from = ""
    return c
