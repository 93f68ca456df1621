"""RQ-Transformer, LSUN-church 256x256 (Table 5: 24 spatial + 4 depth layers, n_e 1024, 16 heads, 370M; FID 7.45).

  python -m rq_jax.extract --rqvae ./workdirs/rqvae_lsun_church --out ./workdirs/features_lsun_church
  python -m rq_jax.train --config configs/transformer/lsun_church.py \
      --workdir ./workdirs/transformer_lsun_church
  python -m rq_jax.sample --workdir ./workdirs/transformer_lsun_church --num 16 --out lsun_church.png
  python -m rq_jax.train --config configs/transformer/lsun_church.py:runlocal ...   # CPU-sized: both stages shrunk

Nests configs/rqvae/lsun_church.py: T = 8x8, D = 4, K and n_z come from it.
Unconditional, tau 0.5, 300 epochs; samples with top-k 1400, top-p 1.0.
"""

from rq_jax.config_lib import table5_transformer


def get_config(arg: str | None = None):
    return table5_transformer("lsun_church", arg)
