"""RQ-VAE, ImageNet 8x8x8, K=16384 (Table 4 ablation: rFID 2.69).

  python -m rq_jax.train --config configs/rqvae/imagenet_8x8x8.py --workdir ./workdirs/rqvae_imagenet_8x8x8
  python -m rq_jax.train --config configs/rqvae/imagenet_8x8x8.py:50ep ...      # the 50-epoch schedule
  python -m rq_jax.train --config configs/rqvae/imagenet_8x8x8.py:runlocal ...  # CPU-sized smoke run

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
    c.model.code_shape = (8, 8, 8)  # (h, w, D): the only difference from the 8x8x4 recipe
    if "runlocal" in args:
        common.runlocal(c)
    return c
