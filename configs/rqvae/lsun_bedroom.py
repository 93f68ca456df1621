"""RQ-VAE, LSUN-bedroom 256x256 8x8x4: the ImageNet RQ-VAE finetuned for one epoch at lr 4e-6.

  python -m rq_jax.train --config configs/rqvae/lsun_bedroom.py --workdir ./workdirs/rqvae_lsun_bedroom \
      --config.init_from=./workdirs/rqvae_imagenet_8x8x4/checkpoints
  python -m rq_jax.train --config configs/rqvae/lsun_bedroom.py:runlocal --workdir /tmp/lsun_tiny
"""

from rq_jax.config_lib import lsun_rqvae


def get_config(arg: str | None = None):
    return lsun_rqvae("bedroom", arg)
