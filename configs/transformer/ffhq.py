"""RQ-Transformer, FFHQ 256x256 (Table 5: 24 spatial + 4 depth layers, n_e 1024, 16 heads,
355M with K = 2048; FID 10.38).

  python -m rq_jax.extract --rqvae ./workdirs/rqvae_ffhq --out ./workdirs/features_ffhq
  python -m rq_jax.train --config configs/transformer/ffhq.py \
      --workdir ./workdirs/transformer_ffhq
  python -m rq_jax.sample --workdir ./workdirs/transformer_ffhq --num 16 --out ffhq.png
  python -m rq_jax.train --config configs/transformer/ffhq.py:runlocal ...   # CPU-sized: both stages shrunk

Nests configs/rqvae/ffhq_8x8x4.py: T = 8x8, D = 4, K and n_z come from it.
Unconditional, tau 1.0 (Table 5; the released yaml says 0.5), batch 16, early stopping on the
validation loss (`train.early_stop_patience` evaluations without improvement; the paper stopped at
epoch 39 of the yaml's 200); samples with top-k 2048, top-p 0.95.
"""

from rq_jax.config_lib import table5_transformer


def get_config(arg: str | None = None):
    return table5_transformer("ffhq", arg)
