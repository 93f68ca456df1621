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
(tests/data/official_state_dicts/cc3m-rqtransformer-8x8x4-650M.txt) and the official yaml have 26, and only
26 gives the 654M parameters of Table 5; this config follows the release.
Text: the tokenizer is trained on the captions (`text.vocab_size` 16384), or pass the official CharBPE files
with `--config.text.tokenizer=DIR` (vocab.json + merges.txt of bpe16k_huggingface). As the official run, it
also trains next-text-token prediction (`train.text_loss_weight` 0.1: 0.1 text + 0.9 image loss).
The extractor reads the stage-1 run's data config: point it at CC-3M (images with captions).
"""

from rq_jax.config_lib import table5_transformer


def get_config(arg: str | None = None):
    return table5_transformer("cc3m", arg)
