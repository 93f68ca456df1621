"""RQ-Transformer, ImageNet 256x256, 1.4B (Table 5: 42 spatial + 6 depth layers, n_e 1536, 24 heads, 1388M;
FID 11.56, 8.71 with the 50-epoch RQ-VAE).

  python -m rq_jax.extract --rqvae ./workdirs/rqvae_imagenet_8x8x4 --out ./workdirs/features_imagenet_1400m
  python -m rq_jax.train --config configs/transformer/imagenet_1400m.py \
      --workdir ./workdirs/transformer_imagenet_1400m
  python -m rq_jax.sample --workdir ./workdirs/transformer_imagenet_1400m \
      --classes 1,207,387,980 --num 8 --out imagenet_1400m.png
  python -m rq_jax.train --config configs/transformer/imagenet_1400m.py:runlocal ...   # CPU-sized: both stages shrunk
  # `imagenet_xxx.py:50ep`: on the 50-epoch RQ-VAE (stage-1 run ./workdirs/rqvae_imagenet_8x8x4_50ep)

Nests configs/rqvae/imagenet_8x8x4.py: T = 8x8, D = 4, K and n_z come from it.
Class-conditional (1000 classes), tau 0.5, 100 epochs; samples with top-k 512, top-p 0.95.
"""

import ml_collections

from configs import common
from configs.rqvae import imagenet_8x8x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "50ep" (on the 50-epoch ImageNet RQ-VAE), "runlocal" (both stages CPU-sized), or both."""
    args = common.parse_arg(arg, "runlocal", "50ep")
    # Stage 1 (nested): T = 8x8 positions, D = 4 depths, K codes of n_z = 256 dims come from it.
    c = common.transformer_config(imagenet_8x8x4.get_config(arg))
    c.rqvae_workdir = "./workdirs/rqvae_imagenet_8x8x4_50ep" if "50ep" in args else "./workdirs/rqvae_imagenet_8x8x4"
    c.data.features_dir = "./workdirs/features_imagenet_1400m"

    # Model (Table 5): spatial + depth transformer layers, width n_e, heads.
    c.model.spatial_layers = 42
    c.model.depth_layers = 6
    c.model.d_model = 1536
    c.model.num_heads = 24
    c.model.dropout = 0.1
    c.model.cond = "class"
    c.model.num_classes = 1000
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
    c.train.num_epochs = 100.0

    # Sampling: the paper's top-k / top-p for this dataset.
    c.sample.top_k = 512
    c.sample.top_p = 0.95

    if "runlocal" in args:
        common.transformer_runlocal(c)
    return c
