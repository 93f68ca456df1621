"""RQ-Transformer, ImageNet 256x256, 821M (Table 5: 24 spatial + 4 depth layers, n_e 1536, 24 heads; FID 13.11).

  python -m rq_jax.extract --rqvae ./workdirs/rqvae_imagenet_8x8x4 --out ./workdirs/features_imagenet_821m
  python -m rq_jax.train --config configs/transformer/imagenet_821m.py \
      --workdir ./workdirs/transformer_imagenet_821m
  python -m rq_jax.sample --workdir ./workdirs/transformer_imagenet_821m \
      --classes 1,207,387,980 --num 8 --out imagenet_821m.png
  python -m rq_jax.train --config configs/transformer/imagenet_821m.py:runlocal ...   # CPU-sized: both stages shrunk
  # `imagenet_xxx.py:50ep`: on the 50-epoch RQ-VAE (stage-1 run ./workdirs/rqvae_imagenet_8x8x4_50ep)

Nests configs/rqvae/imagenet_8x8x4.py: T = 8x8, D = 4, K and n_z come from it.
Class-conditional (1000 classes), tau 0.5, 100 epochs; samples with top-k 512, top-p 0.95.
"""

from rq_jax.config_lib import table5_transformer


def get_config(arg: str | None = None):
    return table5_transformer("imagenet_821m", arg)
