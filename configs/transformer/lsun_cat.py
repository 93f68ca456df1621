"""RQ-Transformer, LSUN-cat 256x256 (Table 5: 26 spatial + 4 depth layers, n_e 1280, 20 heads, 612M; FID 8.64).

  python -m rq_jax.extract --rqvae ./workdirs/rqvae_lsun_cat --out ./workdirs/features_lsun_cat
  python -m rq_jax.train --config configs/transformer/lsun_cat.py \
      --workdir ./workdirs/transformer_lsun_cat
  python -m rq_jax.sample --workdir ./workdirs/transformer_lsun_cat --num 16 --out lsun_cat.png
  python -m rq_jax.train --config configs/transformer/lsun_cat.py:runlocal ...   # CPU-sized: both stages shrunk

Nests configs/rqvae/lsun_cat.py: T = 8x8, D = 4, K and n_z come from it.
Unconditional, tau 0.5, 200 epochs; samples with top-k 512, top-p 0.9.
"""

from rq_jax.config_lib import table5_transformer


def get_config(arg: str | None = None):
    return table5_transformer("lsun_cat", arg)
