"""RQ-VAE, ImageNet 16x16x1, K=16384 (Table 4: VQ-GAN-like, rFID 4.90).

  python -m rq_jax.train --config configs/rqvae/imagenet_16x16x1.py --workdir ./workdirs/rqvae_imagenet_16x16x1
  python -m rq_jax.train --config configs/rqvae/imagenet_16x16x1.py:50ep ...      # the 50-epoch schedule
  python -m rq_jax.train --config configs/rqvae/imagenet_16x16x1.py:runlocal ...  # CPU-sized smoke run

Recipe: configs/rqvae/imagenet_8x8x4.py (Sec. 4, App. A) with this code shape. Data: ImageNet as a
tfds array_record dataset
(`--config.data.data_dir=...`).
"""

import ml_collections

from configs import common
from configs.rqvae import imagenet_8x8x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "50ep" (the 50-epoch schedule), "runlocal" (CPU-sized), or both ("runlocal,50ep")."""
    args = common.parse_arg(arg, "runlocal", "50ep")
    c = imagenet_8x8x4.recipe(args)
    # Five levels instead of six (f = 16: 256x256 -> 16x16), attention at that resolution, one code per position.
    c.model.ch_mult = (1, 1, 2, 2, 4)
    c.model.attn_resolutions = (16,)
    c.model.code_shape = (16, 16, 1)  # (h, w, D)
    if "runlocal" in args:
        common.runlocal(c)
    return c
