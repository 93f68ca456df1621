"""RQ-VAE, FFHQ 256x256 8x8x4, K=2048 (150 epochs).

  python -m rq_jax.train --config configs/rqvae/ffhq_8x8x4.py --workdir ./workdirs/rqvae_ffhq \
      --config.data.folder=/data/ffhq/images1024x1024
  python -m rq_jax.train --config configs/rqvae/ffhq_8x8x4.py:runlocal --workdir /tmp/ffhq_tiny
"""

from rq_jax.config_lib import ffhq_rqvae


def get_config(arg: str | None = None):
    return ffhq_rqvae(arg)
