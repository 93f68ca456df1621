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

import ml_collections

from configs import common
from configs.rqvae import ffhq_8x8x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "runlocal" (both stages CPU-sized) or nothing."""
    args = common.parse_arg(arg, "runlocal")
    # Stage 1 (nested): T = 8x8 positions, D = 4 depths, K codes of n_z = 256 dims come from it.
    c = common.transformer_config(ffhq_8x8x4.get_config(arg))
    c.rqvae_workdir = "./workdirs/rqvae_ffhq"
    c.data.features_dir = "./workdirs/features_ffhq"

    # Model (Table 5): spatial + depth transformer layers, width n_e, heads.
    c.model.spatial_layers = 24
    c.model.depth_layers = 4
    c.model.d_model = 1024
    c.model.num_heads = 16
    c.model.dropout = 0.1
    c.model.cond = "none"  # unconditional: one learned start token
    c.model.num_classes = 1  # unused
    c.model.text_len = 32  # text conditioning only
    c.model.text_vocab_size = 16384  # text conditioning only

    # Soft labels and stochastic codes (Sec. 3.2.3), tau of Table 5.
    c.soft.temperature = 1.0
    c.soft.soft_labels = True
    c.soft.stochastic_codes = True

    # Optimizer (App. A.3): AdamW(0.9, 0.95), cosine schedule from lr 5e-4, weight decay 1e-4.
    c.train.lr = 5e-4
    c.train.b1, c.train.b2 = 0.9, 0.95
    c.train.weight_decay = 1e-4  # not on norms, biases, embeddings
    c.train.warmup_steps = 2000  # linear warm-up; not stated in the paper
    c.train.grad_clip = 1.0  # global-norm clipping; not stated in the paper
    c.train.batch_size = 16
    c.train.num_epochs = 200.0  # the yaml's; the paper stopped early, at epoch 39
    c.train.eval_every = 2000
    c.train.early_stop_patience = 10  # evaluations without a lower validation loss

    # Sampling: the paper's top-k / top-p for this dataset.
    c.sample.top_k = 2048
    c.sample.top_p = 0.95

    if "runlocal" in args:
        common.transformer_runlocal(c)
    return c
