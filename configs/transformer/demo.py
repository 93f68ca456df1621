"""RQ-Transformer on the demo RQ-VAE's codes (embedded emoji or digits), class-conditional.

  python -m rq_jax.extract --rqvae workdirs/demo/rqvae --out workdirs/demo/features
  python -m rq_jax.train --config configs/transformer/demo.py --workdir workdirs/demo/transformer \
      --config.data.features_dir=workdirs/demo/features
  python -m rq_jax.sample --workdir workdirs/demo/transformer --classes 0,1,2,3 --out samples.png
  # text-conditional on the emoji names (needs the emoji set, whose captions are Unicode names):
  python -m rq_jax.train --config configs/transformer/demo.py:text --workdir workdirs/demo/transformer_text
  python -m rq_jax.sample --workdir workdirs/demo/transformer_text --prompt "red apple" --out text.png

Nests configs/rqvae/demo.py: T = 8x8, D = 4, K = 128 and n_z come from it. A 4+1-layer, 128-wide
model with classifier-free-guidance training (10% null condition) that trains in ~6 minutes on 2 CPU cores.

Tuned on what the samples look like and on the judge (README, "Soft labels" has the ablation): no
dropout (the model sees each feature map ~8 times: it underfits, it does not overfit); the second depth
layer's compute went into more steps, which mattered more (judge accuracy at CFG 3: 0.37 after 420
steps with 2 depth layers, 0.51 after 900 with 1); CFG 3 rather than 1.5 (0.41 -> 0.57 on a 1,260-step
model). tau stays the paper's 0.5 although it leaves depths 2-4 of this codebook within 1-2 bits of
uniform: with the rest of this recipe, tau = 0.5 gave judge accuracy 0.58 and demo FID 1.9, 'auto:1.0'
(1 bit per depth) 0.49 and 2.6, smoother but less structured samples.
"""

import ml_collections

from configs import common
from configs.rqvae import demo as rqvae_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: "text" (conditioned on the emoji names), "runlocal" (both stages CPU-sized), or nothing."""
    args = common.parse_arg(arg, "runlocal", "text")
    if len(args) > 1:
        raise ValueError(f"Give one of 'runlocal' and 'text', not both (got {arg!r}).")
    if "runlocal" in args:
        c = common.transformer_config(rqvae_demo.get_config("runlocal"))
        c.model.update(dict(num_classes=10, cfg_null=True))
        common.transformer_runlocal(c)
        c.train.cond_drop_prob = 0.1
        return c

    # Stage 1 (nested): T = 8x8 positions, D = 4 depths, K = 128 codes of n_z = 64 dims come from it.
    c = common.transformer_config(rqvae_demo.get_config())
    c.rqvae_workdir = "workdirs/demo/rqvae"
    c.data.features_dir = "workdirs/demo/features"

    # Model: 4 spatial + 1 depth layers, 128 wide; a null class for classifier-free guidance.
    c.model.update(dict(d_model=128, num_heads=4, spatial_layers=4, depth_layers=1, dropout=0.0))
    c.model.update(dict(cond="class", num_classes=10, cfg_null=True))

    # Soft labels and stochastic codes: tau 0.5 (see the docstring; "auto:1.0" is the calibrated alternative).
    c.soft.temperature = 0.5
    c.soft.soft_labels = True
    c.soft.stochastic_codes = True

    # Optimizer: AdamW(0.9, 0.95), lr 2e-3 after 50 warm-up steps, cosine decay; 10% null condition.
    c.train.update(dict(lr=2e-3, b1=0.9, b2=0.95, weight_decay=1e-4, warmup_steps=50, grad_clip=1.0))
    c.train.update(dict(batch_size=32, num_steps=960, cond_drop_prob=0.1))
    c.train.update(dict(log_every=60, eval_every=480, sample_every=960, checkpoint_every=480, eval_batches=4))

    # Sampling: top-k 32, top-p 0.95, guidance scale 3.
    c.sample.update(dict(top_k=32, top_p=0.95, num=8, cfg_scale=3.0))

    if "text" in args:  # conditioned on the emoji names ("red apple") with a BPE tokenizer trained on them
        c.model.update(dict(cond="text", text_len=16, text_vocab_size=1024))
        c.text.vocab_size = 1024
        c.train.update(dict(num_steps=300, eval_every=300, sample_every=300, checkpoint_every=300))
    return c
