"""RQ-VAE, ImageNet 8x8x8, K=16384 (Table 4 ablation: rFID 2.69).

  python -m rq_jax.train --config configs/rqvae/imagenet_8x8x8.py --workdir ./workdirs/rqvae_imagenet_8x8x8
  python -m rq_jax.train --config configs/rqvae/imagenet_8x8x8.py:50ep ...      # the 50-epoch schedule
  python -m rq_jax.train --config configs/rqvae/imagenet_8x8x8.py:runlocal ...  # CPU-sized smoke run

Data: ImageNet prepared as a tfds array_record dataset (`--config.data.data_dir=...`).
"""

from rq_jax.config_lib import imagenet_rqvae


def get_config(arg: str | None = None):
    return imagenet_rqvae((8, 8, 8), arg)
