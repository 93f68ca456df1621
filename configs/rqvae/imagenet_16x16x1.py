"""RQ-VAE, ImageNet 16x16x1, K=16384 (Table 4: VQ-GAN-like, rFID 4.90).

  python -m rq_jax.train --config configs/rqvae/imagenet_16x16x1.py --workdir ./workdirs/rqvae_imagenet_16x16x1
  python -m rq_jax.train --config configs/rqvae/imagenet_16x16x1.py:50ep ...      # the 50-epoch schedule
  python -m rq_jax.train --config configs/rqvae/imagenet_16x16x1.py:runlocal ...  # CPU-sized smoke run

Data: ImageNet prepared as a tfds array_record dataset (`--config.data.data_dir=...`).
"""

from rq_jax.config_lib import imagenet_rqvae


def get_config(arg: str | None = None):
    return imagenet_rqvae((16, 16, 1), arg)
