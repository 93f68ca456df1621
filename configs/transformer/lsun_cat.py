"""RQ-Transformer, LSUN-cat 256x256 (Table 5: 26 spatial + 4 depth layers, n_e 1280, 20 heads, 612M; FID 8.64).

  python -m rq_jax.extract --rqvae ./workdirs/rqvae_lsun_cat --out ./workdirs/features_lsun_cat
  python -m rq_jax.train --config configs/transformer/lsun_cat.py \
      --workdir ./workdirs/transformer_lsun_cat
  python -m rq_jax.sample --workdir ./workdirs/transformer_lsun_cat --num 16 --out lsun_cat.png
  python -m rq_jax.train --config configs/transformer/lsun_cat.py:runlocal ...   # CPU-sized: both stages shrunk

Nests configs/rqvae/lsun_cat.py: T = 8x8, D = 4, K and n_z come from it.
Unconditional, tau 0.5, 200 epochs; samples with top-k 512, top-p 0.9.
"""

import ml_collections

from configs import common
from configs.rqvae import lsun_cat


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "runlocal" (both stages CPU-sized) or nothing."""
    args = common.parse_arg(arg, "runlocal")
    # Stage 1 (nested): T = 8x8 positions, D = 4 depths, K codes of n_z = 256 dims come from it.
    c = common.transformer_config(lsun_cat.get_config(arg))
    c.rqvae_workdir = "./workdirs/rqvae_lsun_cat"
    c.data.features_dir = "./workdirs/features_lsun_cat"

    # Model (Table 5): spatial + depth transformer layers, width n_e, heads.
    c.model.spatial_layers = 26
    c.model.depth_layers = 4
    c.model.d_model = 1280
    c.model.num_heads = 20
    c.model.dropout = 0.1
    c.model.cond = "none"  # unconditional: one learned start token
    c.model.num_classes = 1  # unused
    c.model.text_len = 32  # text conditioning only
    c.model.text_vocab_size = 16384  # text conditioning only

    # Soft labels and stochastic codes (Sec. 3.2.3), tau of Table 5.
    c.soft.temperature = 0.5
    c.soft.soft_labels = True
    c.soft.stochastic_codes = True

    # Optimizer (App. A.3): AdamW(0.9, 0.95), cosine schedule from lr 5e-4, weight decay 1e-4.
    c.train.lr = 5e-4
    c.train.b1, c.train.b2 = 0.9, 0.95
    c.train.weight_decay = 1e-4  # not on norms, biases, embeddings
    c.train.warmup_steps = 2000  # linear warm-up; not stated in the paper
    c.train.grad_clip = 1.0  # global-norm clipping; not stated in the paper
    c.train.batch_size = 2048
    c.train.num_epochs = 200.0

    # Sampling: the paper's top-k / top-p for this dataset.
    c.sample.top_k = 512
    c.sample.top_p = 0.9

    if "runlocal" in args:
        common.transformer_runlocal(c)
    return c
