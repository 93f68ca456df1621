"""Shared config skeletons: every config file starts from these and overrides what its paper row says.

`rqvae_config()` lists every field the stage-1 trainer reads, with the paper's ImageNet recipe as
defaults; `check_known_keys` turns a misspelt key into one clear error naming it.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from rq_jax.data.pipeline import default_config as data_default_config
from rq_jax.models.rqvae import rqvae_model_config


def rqvae_config() -> ml_collections.ConfigDict:
    """Stage 1 (RQ-VAE): the paper's ImageNet 256x256 8x8x4 K=16384 recipe (Sec. 4, appendix A)."""
    c = ml_collections.ConfigDict()
    c.stage = "rqvae"
    c.seed = 0
    c.init_from = ""  # checkpoints dir of another run to start from (e.g. LSUN finetuned from ImageNet)

    c.model = rqvae_model_config()
    c.data = data_default_config()
    c.data.name = "tfds"
    c.data.tfds_name = "imagenet2012"
    c.data.image_size = 256

    c.loss = ml_collections.ConfigDict()
    c.loss.recon = "l1"  # "l1" | "l2"
    c.loss.beta = 0.25  # commitment weight
    c.loss.perceptual_weight = 1.0  # LPIPS; 0 disables it (no weight file needed)
    c.loss.lpips_path = "~/.cache/rq_jax/lpips_vgg16.npz"
    c.loss.adv_weight = 0.75
    c.loss.adaptive_weight = True  # VQGAN's gradient-norm ratio at the decoder's last layer
    c.loss.disc_start = 0  # step from which the discriminator trains and the adversarial loss counts
    c.loss.disc_loss = "hinge"  # "hinge" | "vanilla"
    c.loss.disc_norm = "batch"  # "batch" (official) | "group" | "layer" | "none"
    c.loss.disc_layers = 2  # the official configs use 2 (taming default 3)
    c.loss.disc_ndf = 64

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global
    c.train.num_epochs = 10.0
    c.train.num_steps = -1  # > 0 overrides num_epochs
    c.train.lr = 4e-5
    c.train.disc_lr = 4e-5
    c.train.warmup_epochs = 0.5
    c.train.warmup_steps = -1  # > 0 overrides warmup_epochs
    c.train.b1 = 0.5
    c.train.b2 = 0.9
    c.train.weight_decay = 0.0
    c.train.grad_clip = 0.0  # global-norm clipping; 0 disables it
    c.train.peak_flops = 0.0  # per device, for MFU in the logs; 0: looked up from the device kind
    c.train.log_every = 50
    c.train.image_every = 1000
    c.train.eval_every = 1000
    c.train.eval_batches = 4
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.async_checkpoints = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh.dcn_shape = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})  # slices per axis (multi-slice)
    c.mesh.rules = ()  # ((logical name, mesh axis | (axes,) | None), ...); empty: rq_jax.sharding.DEFAULT_RULES
    return c


def check_known_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Raises ValueError naming the first key of `config` that `reference` does not have."""
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in reference:
            raise ValueError(
                f"Unknown config key 'config.{path}'; check its spelling against rq_jax/config_lib.py "
                f"(known here: {', '.join(sorted(reference.keys()))})."
            )
        sub, ref = config[key], reference[key]
        if isinstance(sub, ml_collections.ConfigDict) and isinstance(ref, ml_collections.ConfigDict) and key != "shape":
            check_known_keys(sub, ref, path + ".")


def runlocal(config: ml_collections.ConfigDict, **train: Any) -> ml_collections.ConfigDict:
    """Shrinks a stage-1 config to CPU-test size (the `runlocal` variant of every config file)."""
    c = config
    c.model.update(dict(resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                        z_channels=32, embed_dim=32, codebook_size=64))
    f = 2 ** (len(c.model.ch_mult) - 1)
    c.model.code_shape = (32 // f, 32 // f, c.model.code_shape[2])
    c.data.name = "digits"
    c.data.image_size = 32
    c.data.limit = 256
    c.loss.perceptual_weight = 0.0
    c.loss.disc_ndf = 8
    c.loss.disc_start = 1  # step 0 without, step 1 with the discriminator: both paths run
    c.loss.disc_layers = 2
    c.loss.disc_norm = "group"
    c.train.batch_size = 8
    c.train.num_steps = 2
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.image_every = 2
    c.train.eval_every = 2
    c.train.eval_batches = 1
    c.train.checkpoint_every = 2
    c.train.async_checkpoints = False
    c.train.update(train)
    return c


def parse_arg(arg: str | None) -> set[str]:
    """`get_config("runlocal,50ep")` -> {"runlocal", "50ep"}."""
    return {a.strip() for a in (arg or "").split(",") if a.strip()}


def imagenet_rqvae(code_shape: tuple[int, int, int], arg: str | None, *, codebook_size: int = 16384):
    """ImageNet 256x256 RQ-VAE with the paper's recipe (10 epochs; arg "50ep" for the 50-epoch model).

    The latent grid sets the number of down-sampling levels: 8x8 is f=32 (ch_mult of 6 levels, the
    paper's extra block), 16x16 is f=16 (VQGAN's 5 levels).
    """
    args = parse_arg(arg)
    c = rqvae_config()
    levels = {8: (1, 1, 2, 2, 4, 4), 16: (1, 1, 2, 2, 4)}
    c.model.ch_mult = levels[code_shape[0]]
    c.model.attn_resolutions = (code_shape[0],)  # attention at the latent resolution (VQGAN: 16, RQ-VAE: 8)
    c.model.code_shape = tuple(code_shape)
    c.model.codebook_size = codebook_size
    c.train.num_epochs = 50.0 if "50ep" in args else 10.0
    if "runlocal" in args:
        runlocal(c)
    return c


def ffhq_rqvae(arg: str | None):
    """FFHQ 256x256 8x8x4, K=2048: 150 epochs, 5 warm-up epochs, attention at 16 only (the released weights)."""
    c = imagenet_rqvae((8, 8, 4), None, codebook_size=2048)
    c.model.attn_resolutions = (16,)
    c.data.name = "folder"
    c.data.folder = "/path/to/ffhq/images1024x1024"
    c.data.min_crop_scale = 0.75
    c.train.num_epochs = 150.0
    c.train.warmup_epochs = 5.0
    if "runlocal" in parse_arg(arg):
        runlocal(c)
    return c


def lsun_rqvae(category: str, arg: str | None):
    """LSUN-{church, cat, bedroom}: the ImageNet RQ-VAE finetuned for 1 epoch at lr 4e-6 (App. A).

    Set `--config.init_from=WORKDIR_OF_IMAGENET/checkpoints` (defaults to ./workdirs/rqvae_imagenet_8x8x4).
    """
    c = imagenet_rqvae((8, 8, 4), None)
    c.data.name = "tfds"
    c.data.tfds_name = f"lsun/{category}"
    c.data.tfds_eval_split = "train[-5000:]"
    c.data.tfds_train_split = "train[:-5000]"
    c.init_from = "./workdirs/rqvae_imagenet_8x8x4/checkpoints"
    c.train.num_epochs = 1.0
    c.train.lr = 4e-6
    c.train.disc_lr = 4e-6
    c.train.warmup_epochs = 0.0
    if "runlocal" in parse_arg(arg):
        runlocal(c)
        c.init_from = ""
    return c


def transformer_config(rqvae: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 2 (RQ-Transformer) over a stage-1 config: T, D, K and n_z are derived from `rqvae`.

    Defaults are the paper's ImageNet 821M recipe (Table 5, Sec. 4): AdamW(0.9, 0.95), lr 5e-4
    cosine, weight decay 1e-4, batch 2048, tau 0.5 with soft labels and stochastic codes.
    """
    from rq_jax.models.rq_transformer import rq_transformer_model_config

    c = ml_collections.ConfigDict()
    c.stage = "rq_transformer"
    c.seed = 0
    c.init_from = ""
    c.rqvae = rqvae
    c.rqvae_workdir = ""  # the trained stage-1 run (its decoder renders samples)

    c.model = rq_transformer_model_config(cond="class", num_classes=1000)
    # Derived from the stage-1 model (references: overriding config.rqvae.* updates these).
    c.model.vocab_size = c.rqvae.model.get_ref("codebook_size")
    c.model.embed_dim = c.rqvae.model.get_ref("embed_dim")
    c.model.code_shape = c.rqvae.model.get_ref("code_shape")

    c.data = ml_collections.ConfigDict()
    c.data.features_dir = ""  # `python -m rq_jax.extract --rqvae RQVAE_WORKDIR --out DIR`

    c.text = ml_collections.ConfigDict()
    c.text.tokenizer = ""  # tokenizer.json or a CharBPE vocab.json+merges.txt dir; "": trained on the captions
    c.text.vocab_size = 1024  # of a tokenizer trained on the captions (<= model.text_vocab_size)

    c.soft = ml_collections.ConfigDict()
    # tau of Q_tau: a number (the paper: 0.5 at every depth), one number per depth, or "auto:<bits>" (solved per
    # depth at start-up so that Q_tau has that mean entropy on the training features; see README "Soft labels").
    c.soft.temperature = ml_collections.FieldReference(0.5, field_type=object)
    c.soft.temperature_spec = ""  # written by the trainer: the "auto:<bits>" target the numbers were solved for
    c.soft.soft_labels = True  # False: one-hot targets of the codes
    c.soft.stochastic_codes = True  # False: deterministic (argmin) codes

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 2048
    c.train.num_epochs = 100.0
    c.train.num_steps = -1
    c.train.lr = 5e-4
    c.train.warmup_steps = 2000
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.weight_decay = 1e-4  # not applied to norms, biases, embeddings
    c.train.grad_clip = 1.0
    c.train.microbatches = 1  # > 1: gradient accumulation over this many slices of the batch (memory / M)
    c.train.peak_flops = 0.0  # per device, for MFU in the logs; 0: looked up from the device kind
    c.train.text_loss_weight = 0.0  # text models: loss = (1 - w) image + w next-text-token (official CC-3M: 0.1)
    c.train.cond_drop_prob = 0.0  # > 0 with model.cfg_null: classifier-free guidance training
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_batches = 8
    c.train.sample_every = 5000
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.async_checkpoints = True
    c.train.early_stop_patience = 0  # > 0: stop after this many evaluations without improvement

    c.sample = ml_collections.ConfigDict()
    c.sample.temperature = 1.0
    c.sample.top_k = 512
    c.sample.top_p = 0.95
    c.sample.cfg_scale = 1.0
    c.sample.num = 16

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh.dcn_shape = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})  # slices per axis (multi-slice)
    c.mesh.rules = ()  # ((logical name, mesh axis | (axes,) | None), ...); empty: rq_jax.sharding.DEFAULT_RULES
    return c


def transformer_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a stage-2 config (and its stage-1 config) to CPU-test size."""
    runlocal(c.rqvae)
    c.model.update(dict(d_model=64, num_heads=4, spatial_layers=2, depth_layers=1))
    c.train.update(dict(batch_size=8, num_steps=2, warmup_steps=1, log_every=1, eval_every=2, eval_batches=1,
                        sample_every=2, checkpoint_every=2, async_checkpoints=False))
    c.sample.update(dict(top_k=0, top_p=1.0, num=4))
    return c


# Table 5 of the paper (all 8x8x4, n_z = 256): one row per released RQ-Transformer. K and the code shape come
# from the nested stage-1 config. `params` is the paper's count (and the released state dict's, to 0.3%).
TABLE5: dict[str, dict[str, Any]] = {
    "lsun_cat": dict(stage1="lsun:cat", spatial_layers=26, depth_layers=4, d_model=1280, num_heads=20,
                     tau=0.5, cond="none", params=612e6, top_k=512, top_p=0.9, num_epochs=200.0),
    "lsun_bedroom": dict(stage1="lsun:bedroom", spatial_layers=26, depth_layers=4, d_model=1280, num_heads=20,
                         tau=0.5, cond="none", params=612e6, top_k=8192, top_p=0.85, num_epochs=90.0),
    "lsun_church": dict(stage1="lsun:church", spatial_layers=24, depth_layers=4, d_model=1024, num_heads=16,
                        tau=0.5, cond="none", params=370e6, top_k=1400, top_p=1.0, num_epochs=300.0),
    "ffhq": dict(stage1="ffhq", spatial_layers=24, depth_layers=4, d_model=1024, num_heads=16,
                 tau=1.0, cond="none", params=355e6, top_k=2048, top_p=0.95, num_epochs=200.0),
    "imagenet_480m": dict(stage1="imagenet", spatial_layers=12, depth_layers=4, d_model=1536, num_heads=24,
                          tau=0.5, cond="class", params=480e6, top_k=512, top_p=0.95, num_epochs=100.0),
    "imagenet_821m": dict(stage1="imagenet", spatial_layers=24, depth_layers=4, d_model=1536, num_heads=24,
                          tau=0.5, cond="class", params=821e6, top_k=512, top_p=0.95, num_epochs=100.0),
    "imagenet_1400m": dict(stage1="imagenet", spatial_layers=42, depth_layers=6, d_model=1536, num_heads=24,
                           tau=0.5, cond="class", params=1388e6, top_k=512, top_p=0.95, num_epochs=100.0),
    "imagenet_3800m": dict(stage1="imagenet", spatial_layers=42, depth_layers=6, d_model=2560, num_heads=40,
                           tau=0.5, cond="class", params=3822e6, top_k=512, top_p=0.95, num_epochs=100.0,
                           dropout=0.3),
    # Table 5 says 24 spatial layers; the released state dict (and its 654M parameters) has 26.
    "cc3m": dict(stage1="imagenet", spatial_layers=26, depth_layers=4, d_model=1280, num_heads=20,
                 tau=0.5, cond="text", params=654e6, top_k=1024, top_p=0.9, num_epochs=100.0),
}


def _table5_stage1(stage1: str, arg: str | None) -> ml_collections.ConfigDict:
    """The stage-1 config a Table 5 row nests ("imagenet", "ffhq" or "lsun:<category>")."""
    if stage1 == "imagenet":
        return imagenet_rqvae((8, 8, 4), arg)
    if stage1 == "ffhq":
        return ffhq_rqvae(arg)
    if stage1.startswith("lsun:"):
        return lsun_rqvae(stage1.split(":", 1)[1], arg)
    raise ValueError(f"Unknown stage-1 setting {stage1!r}.")


def table5_transformer(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The stage-2 config of one row of Table 5 (`TABLE5[name]`) with the paper's training recipe.

    `arg` is passed on to the stage-1 config ("runlocal" also shrinks the transformer; "50ep" picks the
    50-epoch ImageNet RQ-VAE). Training (App. A): AdamW(0.9, 0.95), cosine from lr 5e-4, weight decay
    1e-4, batch 2048 (FFHQ 16, early-stopped), dropout 0.1 (0.3 for 3.8B); sampling defaults (top-k, top-p)
    are the paper's figures' settings for the dataset.
    """
    if name not in TABLE5:
        raise ValueError(f"Unknown Table 5 row {name!r}; known: {', '.join(TABLE5)}.")
    row = TABLE5[name]
    args = parse_arg(arg)
    c = transformer_config(_table5_stage1(row["stage1"], arg))
    # The stage-1 workdirs of the configs/rqvae/*.py docstrings (CC-3M reuses the ImageNet RQ-VAE).
    stage1_run = {"imagenet": "imagenet_8x8x4", "ffhq": "ffhq"}.get(row["stage1"], row["stage1"].replace(":", "_"))
    if row["stage1"] == "imagenet" and "50ep" in args:
        stage1_run += "_50ep"
    c.rqvae_workdir = f"./workdirs/rqvae_{stage1_run}"
    c.data.features_dir = f"./workdirs/features_{name}"
    c.model.update(dict(d_model=row["d_model"], num_heads=row["num_heads"], spatial_layers=row["spatial_layers"],
                        depth_layers=row["depth_layers"], dropout=row.get("dropout", 0.1), cond=row["cond"],
                        num_classes=1000 if row["cond"] == "class" else 1, text_vocab_size=16384, text_len=32))
    c.soft.temperature = row["tau"]
    c.train.num_epochs = row["num_epochs"]
    if name == "ffhq":
        # Paper: batch 16, early stopping where the validation loss is lowest (epoch 39 of 200).
        c.train.update(dict(batch_size=16, eval_every=2000, early_stop_patience=10))
    c.sample.update(dict(top_k=row["top_k"], top_p=row["top_p"]))
    if row["cond"] == "text":
        c.text.vocab_size = 16384  # the official bpe16k; or --config.text.tokenizer=DIR with its vocab/merges
        c.train.text_loss_weight = 0.1  # the official run: 0.1 next-text-token + 0.9 image loss
    if "runlocal" in args:
        transformer_runlocal(c)
        if row["cond"] == "text":
            c.model.update(dict(text_vocab_size=64, text_len=4))
            c.text.vocab_size = 64
    return c
