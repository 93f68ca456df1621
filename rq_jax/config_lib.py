"""The run-config schemas: every key a trainer reads, with its default, and nothing about a paper row.

`rqvae_config()` (stage 1) and `transformer_config(rqvae)` (stage 2) assemble the sections of a run config
from one dataclass per section: the model (`RQVAEConfig`, `RQTransformerConfig`), the data (`DataConfig`)
and, below, the loss, training, soft-label, text, sampling and mesh options. Each default is written once,
in its dataclass; the recipes of the paper's rows are spelled out in `configs/` (shared pieces in
`configs/common.py`). `check_known_keys` turns a misspelt key into one clear error naming it;
`load_config_file` / `add_config_root` let a config file import its siblings (`from configs.rqvae import ...`)
from any working directory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from typing import Any

import ml_collections

from rq_jax.data.pipeline import default_config as data_default_config
from rq_jax.models.rq_transformer import rq_transformer_model_config
from rq_jax.models.rqvae import rqvae_model_config
from rq_jax.schema import to_config_dict


@dataclasses.dataclass(frozen=True)
class RQVAELossConfig:
    """`config.loss` of stage 1: reconstruction, commitment, LPIPS and the PatchGAN."""

    recon: str = "l1"  # "l1" | "l2"
    beta: float = 0.25  # commitment weight
    perceptual_weight: float = 1.0  # LPIPS; 0 disables it (no weight file needed)
    lpips_path: str = "~/.cache/rq_jax/lpips_vgg16.npz"
    adv_weight: float = 0.75
    adaptive_weight: bool = True  # VQGAN's gradient-norm ratio at the decoder's last layer
    disc_start: int = 0  # step from which the discriminator trains and the adversarial loss counts
    disc_loss: str = "hinge"  # "hinge" | "vanilla"
    disc_norm: str = "batch"  # "batch" (official) | "group" | "layer" | "none"
    disc_layers: int = 2  # the official configs use 2 (taming default 3)
    disc_ndf: int = 64


@dataclasses.dataclass(frozen=True)
class RQVAETrainConfig:
    """`config.train` of stage 1: Adam(b1, b2) with linear warm-up, the schedule of logs and checkpoints."""

    batch_size: int = 128  # global
    num_epochs: float = 10.0
    num_steps: int = -1  # > 0 overrides num_epochs
    lr: float = 4e-5
    disc_lr: float = 4e-5
    warmup_epochs: float = 0.5
    warmup_steps: int = -1  # > 0 overrides warmup_epochs
    b1: float = 0.5
    b2: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # global-norm clipping; 0 disables it
    peak_flops: float = 0.0  # per device, for MFU in the logs; 0: looked up from the device kind
    log_every: int = 50
    image_every: int = 1000
    eval_every: int = 1000
    eval_batches: int = 4
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """`config.mesh`: devices per mesh axis (-1: the rest), slices per axis, logical-axis rules."""

    shape: dict[str, int] = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    dcn_shape: dict[str, int] = dataclasses.field(  # slices per axis (multi-slice)
        default_factory=lambda: {"data": 1, "fsdp": 1, "tensor": 1})
    rules: tuple = ()  # ((logical name, mesh axis | (axes,) | None), ...); empty: rq_jax.sharding.DEFAULT_RULES


@dataclasses.dataclass(frozen=True)
class SoftConfig:
    """`config.soft` of stage 2: the soft labels Q_tau and the stochastic codes (Sec. 3.2.3)."""

    # tau of Q_tau: a number (the paper: 0.5 at every depth), one number per depth, or "auto:<bits>" (solved per
    # depth at start-up so that Q_tau has that mean entropy on the training features; see README "Soft labels").
    temperature: Any = dataclasses.field(default=0.5, metadata={"any_type": True})
    temperature_spec: str = ""  # written by the trainer: the "auto:<bits>" target the numbers were solved for
    soft_labels: bool = True  # False: one-hot targets of the codes
    stochastic_codes: bool = True  # False: deterministic (argmin) codes


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """`config.text` of a text-conditioned stage 2: the BPE tokenizer."""

    tokenizer: str = ""  # tokenizer.json or a CharBPE vocab.json+merges.txt dir; "": trained on the captions
    vocab_size: int = 1024  # of a tokenizer trained on the captions (<= model.text_vocab_size)


@dataclasses.dataclass(frozen=True)
class TransformerTrainConfig:
    """`config.train` of stage 2: AdamW(b1, b2), warm-up then cosine decay, the schedule of logs and checkpoints."""

    batch_size: int = 2048
    num_epochs: float = 100.0
    num_steps: int = -1
    lr: float = 5e-4
    warmup_steps: int = 2000
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 1e-4  # not applied to norms, biases, embeddings
    grad_clip: float = 1.0
    microbatches: int = 1  # > 1: gradient accumulation over this many slices of the batch (memory / M)
    peak_flops: float = 0.0  # per device, for MFU in the logs; 0: looked up from the device kind
    text_loss_weight: float = 0.0  # text models: loss = (1 - w) image + w next-text-token (official CC-3M: 0.1)
    cond_drop_prob: float = 0.0  # > 0 with model.cfg_null: classifier-free guidance training
    log_every: int = 50
    eval_every: int = 1000
    eval_batches: int = 8
    sample_every: int = 5000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    early_stop_patience: int = 0  # > 0: stop after this many evaluations without improvement


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """`config.sample`: the sampling defaults of `python -m rq_jax.sample` and of the samples logged in training."""

    temperature: float = 1.0
    top_k: int = 512
    top_p: float = 0.95
    cfg_scale: float = 1.0
    num: int = 16


def rqvae_config() -> ml_collections.ConfigDict:
    """Stage 1 (RQ-VAE): every key with its default (model, loss and training: the paper's ImageNet 8x8x4 recipe;
    data: `DataConfig`'s, the embedded dataset)."""
    c = ml_collections.ConfigDict()
    c.stage = "rqvae"
    c.seed = 0
    c.init_from = ""  # checkpoints dir of another run to start from (e.g. LSUN finetuned from ImageNet)
    c.model = rqvae_model_config()
    c.data = data_default_config()
    c.loss = to_config_dict(RQVAELossConfig())
    c.train = to_config_dict(RQVAETrainConfig())
    c.mesh = to_config_dict(MeshConfig())
    return c


def transformer_config(rqvae: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 2 (RQ-Transformer) over a stage-1 config: T, D, K and n_z are derived from `rqvae`.

    The other defaults are the paper's ImageNet 821M recipe (Table 5, App. A).
    """
    c = ml_collections.ConfigDict()
    c.stage = "rq_transformer"
    c.seed = 0
    c.init_from = ""
    c.rqvae = rqvae
    c.rqvae_workdir = ""  # the trained stage-1 run (its decoder renders samples)
    c.model = rq_transformer_model_config()
    # Derived from the stage-1 model (references: overriding config.rqvae.* updates these).
    c.model.vocab_size = c.rqvae.model.get_ref("codebook_size")
    c.model.embed_dim = c.rqvae.model.get_ref("embed_dim")
    c.model.code_shape = c.rqvae.model.get_ref("code_shape")
    c.data = ml_collections.ConfigDict()
    c.data.features_dir = ""  # `python -m rq_jax.extract --rqvae RQVAE_WORKDIR --out DIR`
    c.text = to_config_dict(TextConfig())
    c.soft = to_config_dict(SoftConfig())
    c.train = to_config_dict(TransformerTrainConfig())
    c.sample = to_config_dict(SampleConfig())
    c.mesh = to_config_dict(MeshConfig())
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


def config_root(path: str) -> str | None:
    """The folder holding the `configs` package that the config file `path` lives in (None: not in one).

    `configs/transformer/cc3m.py` imports its stage-1 config (`from configs.rqvae import imagenet_8x8x4`), so
    that folder must be on sys.path when the file runs, whatever the working directory.
    """
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.basename(folder) == "configs" and os.path.isfile(os.path.join(folder, "__init__.py")):
            return os.path.dirname(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def add_config_root(path: str) -> None:
    """Puts `config_root(path)` first on sys.path (no-op outside a `configs` package)."""
    root = config_root(path)
    if root is not None and root not in sys.path:
        sys.path.insert(0, root)


def add_config_root_from_argv(argv: list[str], flag: str = "config") -> None:
    """`add_config_root` for the file of `--config=PATH[:arg]` / `--config PATH[:arg]` in `argv`.

    For command lines whose config file absl's config_flags executes while parsing the flags.
    """
    for i, a in enumerate(argv):
        value = None
        if a.startswith(f"--{flag}="):
            value = a.split("=", 1)[1]
        elif a == f"--{flag}" and i + 1 < len(argv):
            value = argv[i + 1]
        if value:
            add_config_root(value.split(":", 1)[0])


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file `spec` = "PATH[:arg]" (as `--config`), importable from any cwd."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The config file {path!r} does not exist; give a .py with get_config().")
    add_config_root(path)
    module_spec = importlib.util.spec_from_file_location(f"_rq_jax_config_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path!r} has no get_config() function.")
    return module.get_config(arg) if arg else module.get_config()
