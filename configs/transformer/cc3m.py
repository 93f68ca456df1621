"""RQ-Transformer, CC-3M 256x256, text-conditioned (Table 5: 26 spatial + 4 depth layers, n_e 1280, 20 heads,
654M; FID 12.33).

  python -m rq_jax.extract --rqvae ./workdirs/rqvae_imagenet_8x8x4 --out ./workdirs/features_cc3m   # CC-3M images
  python -m rq_jax.train --config configs/transformer/cc3m.py --workdir ./workdirs/transformer_cc3m
  python -m rq_jax.sample --workdir ./workdirs/transformer_cc3m --prompt "a painting of a cat" --num 8 --out cc3m.png
  python -m rq_jax.train --config configs/transformer/cc3m.py:runlocal ...   # CPU-sized: both stages shrunk

Nests configs/rqvae/imagenet_8x8x4.py: the ImageNet RQ-VAE is reused without finetuning (App. A), so T = 8x8, D = 4,
K = 16384 and n_z = 256 come from it. The condition is <= 32 BPE tokens (text_vocab_size 16384), prepended to
the spatial sequence (T = 32 + 64 - 1 = 95 inputs); tau 0.5; samples with top-k 1024, top-p 0.9.

Layers: Table 5 lists 24 spatial layers, but the released state dict
(tests/golden/official_state_dicts/cc3m-rqtransformer-8x8x4-650M.txt) and the official yaml have 26, and only
26 gives the 654M parameters of Table 5; this config follows the release.
Text: the tokenizer is trained on the captions (`text.vocab_size` 16384), or pass the official CharBPE files
with `--config.text.tokenizer=DIR` (vocab.json + merges.txt of bpe16k_huggingface). As the official run, it
also trains next-text-token prediction (`train.text_loss_weight` 0.1: 0.1 text + 0.9 image loss).
The extractor reads the stage-1 run's data config: point it at CC-3M (images with captions).
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
    c.data.features_dir = "./workdirs/features_cc3m"

    # Model (Table 5): spatial + depth transformer layers, width n_e, heads.
    c.model.spatial_layers = 26
    c.model.depth_layers = 4
    c.model.d_model = 1280
    c.model.num_heads = 20
    c.model.dropout = 0.1
    c.model.cond = "text"  # <= 32 BPE tokens prepended to the 64 positions
    c.model.num_classes = 1  # unused
    c.model.text_len = 32  # BPE tokens per caption
    c.model.text_vocab_size = 16384  # the official bpe16k

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

    # Text: the official bpe16k vocabulary size (or --config.text.tokenizer=DIR with its vocab/merges), and
    # the official auxiliary loss: 0.1 next-text-token + 0.9 image.
    c.text.vocab_size = 16384
    c.train.text_loss_weight = 0.1

    # Sampling: the paper's top-k / top-p for this dataset.
    c.sample.top_k = 1024
    c.sample.top_p = 0.9

    if "runlocal" in args:
        common.transformer_runlocal(c)
        c.model.update(dict(text_vocab_size=64, text_len=4))
        c.text.vocab_size = 64
    return c
