"""An official RQ-VAE's config.yaml (or, without one, its tensor shapes) -> the rq_jax stage-1 run config.

The model fields are read from the shapes and the yaml is cross-checked against them: a disagreement is
one ValueError naming the yaml key and the tensor. The yaml's training recipe is carried over so that the
converted model can be fine-tuned the official way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from rq_jax.convert.official_yaml import MISSING, comparable, disagreement, set_recipe, yaml_value

_LEVEL_RE = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
_CODEBOOK_RE = re.compile(r"^quantizer\.codebooks\.(\d+)\.")

# model field -> (yaml key under `arch`, the tensor that shows it)
_RQVAE_YAML = {
    "in_channels": ("ddconfig.in_channels", "encoder.conv_in.weight"),
    "out_channels": ("ddconfig.out_ch", "decoder.conv_out.weight"),
    "ch": ("ddconfig.ch", "encoder.conv_in.weight"),
    "ch_mult": ("ddconfig.ch_mult", "encoder.down.*.block.*.conv1.weight"),
    "num_res_blocks": ("ddconfig.num_res_blocks", "encoder.down.0.block.*"),
    "attn_resolutions": ("ddconfig.attn_resolutions", "encoder.down.*.attn.*"),
    "z_channels": ("ddconfig.z_channels", "encoder.conv_out.weight"),
    "embed_dim": ("hparams.embed_dim", "quant_conv.weight"),
    "codebook_size": ("hparams.n_embed", "quantizer.codebooks.0.cluster_size_ema"),
    "code_shape": ("hparams.code_shape", "quantizer.codebooks.* (depth)"),
}
# (yaml key under `arch`, the only value rq_jax supports)
_RQVAE_SUPPORTED = (("hparams.bottleneck_type", "rq"), ("ddconfig.double_z", False), ("hparams.shared_codebook", True))
# (yaml key, config field): the official training recipe, for fine-tuning the converted model
_RQVAE_RECIPE = (
    ("optimizer.init_lr", "train.lr"), ("optimizer.init_lr", "train.disc_lr"),
    ("optimizer.weight_decay", "train.weight_decay"), ("optimizer.warmup.epoch", "train.warmup_epochs"),
    ("experiment.epochs", "train.num_epochs"), ("arch.hparams.latent_loss_weight", "loss.beta"),
    ("gan.loss.disc_weight", "loss.adv_weight"), ("gan.loss.perceptual_weight", "loss.perceptual_weight"),
    ("gan.loss.disc_start", "loss.disc_start"), ("gan.loss.disc_loss", "loss.disc_loss"),
    ("gan.disc.arch.num_layers", "loss.disc_layers"), ("gan.disc.arch.ndf", "loss.disc_ndf"),
)


def _encoder_levels(shapes: Mapping[str, tuple[int, ...]]) -> dict[int, set[int]]:
    """Encoder level -> the indices of its residual blocks, from the tensor names."""
    blocks: dict[int, set[int]] = {}
    for name in shapes:
        m = _LEVEL_RE.match(name)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    levels = sorted(blocks)
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"The encoder levels encoder.down.* are {levels}, not 0..n-1.")
    return blocks


def rqvae_fields_from_shapes(shapes: Mapping[str, tuple[int, ...]], resolution: int = 256) -> dict[str, Any]:
    """The `rqvae_model_config` fields an official RQ-VAE state dict implies (the image size is not visible)."""

    def get(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise KeyError(f"The state dict has no tensor {name!r}; is it an official RQ-VAE state dict?")
        return shapes[name]

    blocks = _encoder_levels(shapes)
    levels = sorted(blocks)
    ch, in_channels = get("encoder.conv_in.weight")[:2]
    ch_mult = []
    for i in levels:
        c = get(f"encoder.down.{i}.block.{max(blocks[i])}.conv1.weight")[0]
        if c % ch:
            raise ValueError(f"encoder.down.{i} has {c} channels, not a multiple of ch = {ch} (encoder.conv_in).")
        ch_mult.append(c // ch)
    depth = len({m.group(1) for m in map(_CODEBOOK_RE.match, shapes) if m})
    f = 2 ** (len(levels) - 1)
    return dict(
        resolution=int(resolution), in_channels=in_channels, out_channels=get("decoder.conv_out.weight")[0], ch=ch,
        ch_mult=tuple(ch_mult), num_res_blocks=len(blocks[0]),
        attn_resolutions=tuple(resolution // 2**i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in shapes),
        z_channels=get("encoder.conv_out.weight")[0], embed_dim=get("quant_conv.weight")[0],
        codebook_size=get("quantizer.codebooks.0.cluster_size_ema")[0],
        code_shape=(resolution // f, resolution // f, depth),
    )


def _dataset_type(yaml_cfg: Mapping[str, Any] | None) -> str:
    return str(yaml_value(yaml_cfg, "dataset.type") or yaml_value(yaml_cfg, "dataset.dataset") or "").lower()


def _stage1_base(dataset: str, resolution: int) -> ml_collections.ConfigDict:
    """The stage-1 run schema with the data of the official run's dataset (the recipe comes from its yaml).

    The data settings are those of configs/rqvae/{imagenet_8x8x4, ffhq_8x8x4, lsun_*}.py.
    """
    from rq_jax.config_lib import rqvae_config

    c = rqvae_config()
    c.data.image_size = resolution
    if dataset == "ffhq":
        c.data.update(dict(name="folder", folder="/path/to/ffhq/images1024x1024", min_crop_scale=0.75))
    elif dataset.startswith("lsun-"):
        c.data.update(dict(name="tfds", tfds_name=f"lsun/{dataset.split('-', 1)[1]}",
                           tfds_train_split="train[:-5000]", tfds_eval_split="train[-5000:]"))
    else:  # ImageNet (also when the dataset is unknown or there is no yaml)
        c.data.update(dict(name="tfds", tfds_name="imagenet2012"))
    return c


def _check_supported(arch: Mapping[str, Any], where: str) -> None:
    """Raises on an `arch` option that rq_jax's RQ-VAE does not implement."""
    for key, supported in _RQVAE_SUPPORTED:
        value = yaml_value(arch, key, MISSING)
        if value is not MISSING and value != supported:
            raise ValueError(f"{where}: arch.{key} = {value!r} is not supported (rq_jax needs {supported!r}).")


def _check_arch_against_shapes(arch: Mapping[str, Any], fields: dict[str, Any], where: str) -> None:
    """Raises on an `arch` value that the tensor shapes contradict."""
    level_res = {fields["resolution"] // 2**i for i in range(len(fields["ch_mult"]))}
    for field, (key, tensor) in _RQVAE_YAML.items():
        value = yaml_value(arch, key, MISSING)
        if value is MISSING:
            continue
        got = comparable(value)
        if field == "attn_resolutions":  # resolutions that no level has add no attention
            got = tuple(r for r in level_res if r in set(got))
            if sorted(got) != sorted(fields[field]):
                raise disagreement(where, f"arch.{key}", value, field, fields[field], tensor)
            continue
        if got != fields[field]:
            raise disagreement(where, f"arch.{key}", value, field, fields[field], tensor)


def stage1_config_from_official(
    shapes: Mapping[str, tuple[int, ...]], yaml_cfg: Mapping[str, Any] | None, where: str = "the stage-1 checkpoint"
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The rq_jax stage-1 run config of an official RQ-VAE (yaml cross-checked with the shapes), and notes."""
    notes: list[str] = []
    arch = yaml_value(yaml_cfg, "arch", {}) or {}
    if yaml_cfg is None:
        notes.append(f"note: {where} has no config.yaml: the RQ-VAE config was inferred from the tensor shapes "
                     "(256x256 images assumed; quantizer decay 0.99 and code restarts, the training recipe and the "
                     "data config are rq_jax defaults)")
    _check_supported(arch, where)
    fields = rqvae_fields_from_shapes(shapes, int(yaml_value(arch, "ddconfig.resolution", 256)))
    _check_arch_against_shapes(arch, fields, where)
    c = _stage1_base(_dataset_type(yaml_cfg), fields["resolution"])
    c.model.update(fields)
    if yaml_cfg is not None:
        c.model.dropout = float(yaml_value(arch, "ddconfig.dropout", 0.0))
        c.model.quantizer.decay = float(yaml_value(arch, "hparams.decay", 0.99))
        c.model.quantizer.restart = bool(yaml_value(arch, "hparams.restart_unused_codes", False))
        c.loss.recon = "l2" if yaml_value(arch, "hparams.loss_type", "l1") == "mse" else "l1"
        set_recipe(c, yaml_cfg, _RQVAE_RECIPE)
    return c, notes
