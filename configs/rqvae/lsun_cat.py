"""RQ-VAE, LSUN-cat 256x256 8x8x4: the ImageNet RQ-VAE finetuned for one epoch at lr 4e-6 (App. A).

  python -m rq_jax.train --config configs/rqvae/lsun_cat.py --workdir ./workdirs/rqvae_lsun_cat \
      --config.init_from=./workdirs/rqvae_imagenet_8x8x4/checkpoints
  python -m rq_jax.train --config configs/rqvae/lsun_cat.py:runlocal --workdir /tmp/lsun_tiny

The recipe of configs/rqvae/lsun_church.py on this category: the model, codebook and losses of
configs/rqvae/imagenet_8x8x4.py (its weights are the start);
the last 5,000 training images are held out for evaluation.
"""

import ml_collections

from configs.rqvae import lsun_church


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "runlocal" (CPU-sized) or nothing."""
    return lsun_church.finetuned("cat", arg)
