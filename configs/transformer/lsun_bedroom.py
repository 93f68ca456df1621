"""RQ-Transformer, LSUN-bedroom 256x256 (Table 5: 26 spatial + 4 depth layers, n_e 1280, 20 heads, 612M; FID 3.04).

  python -m rq_jax.extract --rqvae ./workdirs/rqvae_lsun_bedroom --out ./workdirs/features_lsun_bedroom
  python -m rq_jax.train --config configs/transformer/lsun_bedroom.py \
      --workdir ./workdirs/transformer_lsun_bedroom
  python -m rq_jax.sample --workdir ./workdirs/transformer_lsun_bedroom --num 16 --out lsun_bedroom.png
  python -m rq_jax.train --config configs/transformer/lsun_bedroom.py:runlocal ...   # CPU-sized: both stages shrunk

Nests configs/rqvae/lsun_bedroom.py: T = 8x8, D = 4, K and n_z come from it.
Unconditional, tau 0.5, 90 epochs; samples with top-k 8192, top-p 0.85.
"""

from rq_jax.config_lib import table5_transformer


def get_config(arg: str | None = None):
    return table5_transformer("lsun_bedroom", arg)
