"""`python -m rq_jax.convert official`: a released official RQ-VAE / RQ-Transformer checkpoint -> rq_jax runs.

    python -m rq_jax.convert official --ckpt ffhq/stage2 --out ./workdirs/official_ffhq
    python -m rq_jax.convert official --ckpt in256_1.4B/stage2/model.pt --stage1 in256_1.4B/stage1 --out OUT
    python -m rq_jax.convert official --ckpt cc3m/stage2 --tokenizer_dir TOKENIZER_FILES --out OUT
    python -m rq_jax.convert official --ckpt ffhq/stage1 --out ./workdirs/official_ffhq_rqvae   # stage 1 only
    python -m rq_jax.sample --workdir ./workdirs/official_ffhq/stage2 --out ffhq.png

Input: a folder of the official release (`model.pt`, a dict whose `state_dict` holds the weights, with its
`config.yaml` beside it) or the `.pt` file itself (a plain state dict works too). A stage-2 checkpoint also
needs its stage-1 RQ-VAE: `--stage1`, else the `vqvae` path of its config.yaml, else the sibling `../stage1`.
The text-conditioned CC-3M model also needs the official CharBPE tokenizer files `bpe-16k-vocab.json` and
`bpe-16k-merges.txt` (rqvae/txtimg_datasets/tokenizers/pretrained/ in the official repository):
`--tokenizer_dir`, else they are looked for beside the checkpoint.

Output, under OUT: `stage1/` and, for a stage-2 checkpoint, `stage2/`: rq_jax run directories (config.json
and an orbax checkpoint at step 0, the state the trainers save: `gen` + `codebook` for stage 1, `params` for
stage 2) read by `rq_jax.runs` (`load_rqvae`, `load_rq_transformer`) and `python -m rq_jax.sample`.
`stage2/config.json` points at OUT/stage1 by an absolute `rqvae_workdir` (convert again after moving OUT);
text models get `stage2/tokenizer.json` and `stage2/tokenizer/` (the vocab/merges files and the
tokenizer.json; the config's `text.tokenizer`). Also `conversion_report.txt` (what happened to every source tensor) and
`LICENSE_WEIGHTS.txt`. Each stage folder keeps the source yaml as `official_config.yaml`.

Configs: config.yaml (`arch.ddconfig` / `arch.hparams` for stage 1; `arch`, `dataset`, `loss`, `optimizer`,
`sampling` for stage 2) is translated into `rqvae_config()` / `transformer_config(stage1)` and cross-checked
against the tensor shapes: a disagreement is one ValueError naming the yaml key and the tensor. Without
config.yaml the model is inferred from the shapes alone and the report lists the assumptions (256x256
images, num_heads = d_model / 64, rq_jax's training recipe). Tensor names and layouts are mapped by
`rq_jax.convert.rqvae` and `rq_jax.convert.rq_transformer` (conv OIHW -> HWIO, linear (out, in) ->
(in, out), positional embeddings (1, L, C) -> (L, C); the shared codebook's four aliases
`quantizer.codebooks.0..3` become one codebook without its zero padding row). A shape mismatch raises a
ValueError naming the tensor and both shapes.

Licence: the official pretrained weights are released by Kakao Brain under CC-BY-NC-SA 4.0
(https://creativecommons.org/licenses/by-nc-sa/4.0/; the official README: "The pretrained weights are
licensed under CC-BY-NC-SA 4.0 License" and "any commercial use of our checkpoints is strictly
prohibited"). The converted weights are an adaptation of those weights (a format conversion) and keep that
licence: attribution, non-commercial use only, and redistribution of them or of models derived from them
under the same licence. rq_jax's own licence covers its code, not these weights.

Needs PyTorch and PyYAML (`pip install torch pyyaml`, or `pip install -e .[convert]`), imported only here.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import pickle
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from rq_jax.convert import rq_transformer as tf_convert
from rq_jax.convert import rqvae as vae_convert

HELP = "official RQ-VAE / RQ-Transformer checkpoint (model.pt + config.yaml) -> rq_jax run directories"

STAGE1, STAGE2 = "rqvae", "rq_transformer"
OFFICIAL_REPO = "https://github.com/kakaobrain/rq-vae-transformer"
TOKENIZER_PREFIXES = {"bpe16k_huggingface": "bpe-16k", "bpe30k_huggingface": "bpe-30k"}
TORCH_MISSING = ("Converting official checkpoints needs PyTorch: install it with `pip install torch` "
                 "(or `pip install -e .[convert]`).")
YAML_MISSING = ("Reading the official config.yaml needs PyYAML: install it with `pip install pyyaml` "
                "(or `pip install -e .[convert]`).")

LICENSE_TEXT = f"""\
Licence of the converted weights
================================

The weights in this directory were converted by rq_jax (`python -m rq_jax.convert official`) from the
pretrained checkpoints that Kakao Brain released with "Autoregressive Image Generation using Residual
Quantization" (Lee et al., CVPR 2022): {OFFICIAL_REPO}

The official README states: "The pretrained weights are licensed under CC-BY-NC-SA 4.0 License." and
"We note that any commercial use of our checkpoints is strictly prohibited."

The converted weights are an adaptation (a change of file format and array layout, no retraining) of
those weights and keep their licence, Creative Commons Attribution-NonCommercial-ShareAlike 4.0
International (CC BY-NC-SA 4.0), https://creativecommons.org/licenses/by-nc-sa/4.0/ :
  * Attribution: credit Kakao Brain and the paper, link the licence, and say that the weights were converted;
  * NonCommercial: no commercial use;
  * ShareAlike: these weights, and models derived from them (e.g. by fine-tuning), may only be shared
    under the same licence.
The licence of rq_jax's source code does not apply to these weights.
"""


# ---------------------------------------------------------------------------------------------------
# Reading the official files
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class OfficialCheckpoint:
    """An official `model.pt` read into numpy, with its `config.yaml` (None when absent)."""

    path: str
    state_dict: dict[str, np.ndarray]
    yaml: dict[str, Any] | None
    yaml_path: str | None
    notes: list[str]  # report lines about entries of the file that are not the weights

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict.items()}


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError(TORCH_MISSING) from e
    return torch


def read_yaml(path: str) -> dict[str, Any]:
    """An official config.yaml as nested dicts."""
    try:
        import yaml
    except ImportError as e:
        raise ImportError(YAML_MISSING) from e
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not an official config (a YAML mapping with `arch`, `dataset`, ...).")
    return data


def checkpoint_file(path: str | os.PathLike) -> str:
    """The `.pt` file of an official checkpoint given as that file or as its folder."""
    p = os.fspath(path)
    if os.path.isdir(p):
        if os.path.isfile(os.path.join(p, "model.pt")):
            return os.path.join(p, "model.pt")
        found = sorted(glob.glob(os.path.join(p, "*.pt")))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(
            f"The folder {p} holds {'no' if not found else 'several'} .pt files and no model.pt: give the folder "
            "of an official checkpoint (model.pt and config.yaml) or the .pt file itself."
        )
    if not os.path.isfile(p):
        raise FileNotFoundError(
            f"No official checkpoint at {p}: give the folder of an official checkpoint (model.pt and config.yaml) "
            "or the .pt file itself."
        )
    return p


def _torch_load(path: str, allow_pickle: bool) -> Any:
    torch = _torch()

    def load(weights_only: bool) -> Any:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError:  # files in the legacy (non-zip) format cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=weights_only)

    try:
        try:
            return load(True)
        except pickle.UnpicklingError as e:
            if "weights only" not in str(e).lower():
                raise
            if not allow_pickle:
                raise ValueError(
                    f"{path} holds Python objects besides tensors, which a safe torch.load refuses; if you trust "
                    "the file (e.g. it comes from the official release), rerun with --allow_pickle."
                ) from e
            return load(False)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader error becomes one sentence naming the file
        raise ValueError(f"{path} is not a PyTorch checkpoint that torch.load can read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}).") from e


def _describe(value: Any) -> str:
    if hasattr(value, "shape"):
        return f"tensor {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"{len(value)} entries"
    return type(value).__name__


def read_official_checkpoint(
    path: str | os.PathLike, *, allow_pickle: bool = False, ema: bool = False
) -> OfficialCheckpoint:
    """Reads an official checkpoint (folder or .pt) and the config.yaml beside it, tensors as float32 numpy.

    The weights are the file's `state_dict` entry (`state_dict_ema` with `ema`), or the file itself when it is
    a plain state dict; its other entries (optimizer, discriminator, ...) are listed in `notes` as ignored.
    """
    torch = _torch()
    file = checkpoint_file(path)
    obj = _torch_load(file, allow_pickle)
    key = "state_dict_ema" if ema else "state_dict"
    notes = []
    if isinstance(obj, Mapping) and key in obj:
        weights = obj[key]
        notes = [f"ignored: top-level entry {k!r} of {file} ({_describe(v)}): not the model weights"
                 for k, v in obj.items() if k != key]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()) and not ema:
        weights = obj
    else:
        entries = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{file} holds neither a dict with a {key!r} entry nor a state dict of tensors "
                         f"(found {entries}).")
    if not isinstance(weights, Mapping):
        raise ValueError(f"{file}: the {key!r} entry is a {type(weights).__name__}, not a state dict of tensors.")
    names = list(weights)
    strip = len(names) > 0 and all(n.startswith("module.") for n in names)  # saved from a DDP-wrapped model
    state_dict = {}
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{file}: state dict entry {name!r} is a {type(tensor).__name__}, not a tensor.")
        tensor = tensor.detach().cpu()
        array = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        state_dict[name[len("module."):] if strip else name] = array
    if strip:
        notes.append(f"note: the 'module.' prefix of every name in {file} was removed")
    yaml_path = os.path.join(os.path.dirname(file), "config.yaml")
    yaml_cfg = read_yaml(yaml_path) if os.path.isfile(yaml_path) else None
    return OfficialCheckpoint(file, state_dict, yaml_cfg, yaml_path if yaml_cfg is not None else None, notes)


# ---------------------------------------------------------------------------------------------------
# Configs: config.yaml (or the shapes) -> rq_jax configs
# ---------------------------------------------------------------------------------------------------
_MISSING = object()


def _get(tree: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _norm(value: Any) -> Any:
    """yaml values comparable with config values: lists -> tuples of ints, numbers -> int where exact."""
    if isinstance(value, list | tuple):
        return tuple(_norm(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets a config field, casting the value to the field's type (int -> float, ...)."""
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    current = node[leaf]
    if isinstance(current, bool):
        value = bool(value)
    elif isinstance(current, int | float | str) and not isinstance(value, list | tuple):
        value = type(current)(value)
    node[leaf] = value


def checkpoint_stage(shapes: Mapping[str, tuple[int, ...]], yaml_cfg: Mapping[str, Any] | None, where: str) -> str:
    """STAGE1 or STAGE2, from the tensor names, checked against the yaml's `arch.type`."""
    if any(k.startswith("quantizer.codebooks.") for k in shapes):
        by_shape = STAGE1
    elif "pos_emb_hw" in shapes:
        by_shape = STAGE2
    else:
        raise ValueError(f"{where} is neither an official RQ-VAE (quantizer.codebooks.*) nor an RQ-Transformer "
                         "(pos_emb_hw) state dict.")
    arch_type = _get(yaml_cfg, "arch.type")
    if arch_type is not None:
        by_yaml = {"rq-vae": STAGE1, "rq-transformer": STAGE2}.get(str(arch_type).lower())
        if by_yaml is None:
            raise ValueError(f"{where}: arch.type {arch_type!r} is not supported (only rq-vae and rq-transformer).")
        if by_yaml != by_shape:
            raise ValueError(f"{where}: config.yaml says arch.type {arch_type!r} but the tensors are an {by_shape} "
                             "state dict.")
    return by_shape


def _disagree(where: str, yaml_key: str, yaml_value: Any, field: str, value: Any, tensor: str) -> ValueError:
    return ValueError(f"{where}: config.yaml has {yaml_key} = {yaml_value!r} but the checkpoint's {tensor} gives "
                      f"{field} = {value!r}.")


_LEVEL_RE = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
_CODEBOOK_RE = re.compile(r"^quantizer\.codebooks\.(\d+)\.")


def rqvae_fields_from_shapes(shapes: Mapping[str, tuple[int, ...]], resolution: int = 256) -> dict[str, Any]:
    """The `rqvae_model_config` fields an official RQ-VAE state dict implies (the image size is not visible)."""

    def get(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise KeyError(f"The state dict has no tensor {name!r}; is it an official RQ-VAE state dict?")
        return shapes[name]

    blocks: dict[int, set[int]] = {}
    for name in shapes:
        m = _LEVEL_RE.match(name)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    levels = sorted(blocks)
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"The encoder levels encoder.down.* are {levels}, not 0..n-1.")
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
# (yaml key, config field): the official training recipe, for fine-tuning the converted model
_RQVAE_RECIPE = (
    ("optimizer.init_lr", "train.lr"), ("optimizer.init_lr", "train.disc_lr"),
    ("optimizer.weight_decay", "train.weight_decay"), ("optimizer.warmup.epoch", "train.warmup_epochs"),
    ("experiment.epochs", "train.num_epochs"), ("arch.hparams.latent_loss_weight", "loss.beta"),
    ("gan.loss.disc_weight", "loss.adv_weight"), ("gan.loss.perceptual_weight", "loss.perceptual_weight"),
    ("gan.loss.disc_start", "loss.disc_start"), ("gan.loss.disc_loss", "loss.disc_loss"),
    ("gan.disc.arch.num_layers", "loss.disc_layers"), ("gan.disc.arch.ndf", "loss.disc_ndf"),
)


def _dataset_type(yaml_cfg: Mapping[str, Any] | None) -> str:
    return str(_get(yaml_cfg, "dataset.type") or _get(yaml_cfg, "dataset.dataset") or "").lower()


def _stage1_base(dataset: str) -> ml_collections.ConfigDict:
    from rq_jax import config_lib

    if dataset == "imagenet":
        return config_lib.imagenet_rqvae((8, 8, 4), None)
    if dataset == "ffhq":
        return config_lib.ffhq_rqvae(None)
    if dataset.startswith("lsun-"):
        c = config_lib.lsun_rqvae(dataset.split("-", 1)[1], None)
        c.init_from = ""  # the converted weights are the finetuned ones
        return c
    return config_lib.rqvae_config()


def stage1_config_from_official(
    shapes: Mapping[str, tuple[int, ...]], yaml_cfg: Mapping[str, Any] | None, where: str = "the stage-1 checkpoint"
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The rq_jax stage-1 run config of an official RQ-VAE (yaml cross-checked with the shapes), and notes."""
    notes: list[str] = []
    arch = _get(yaml_cfg, "arch", {}) or {}
    if yaml_cfg is None:
        notes.append(f"note: {where} has no config.yaml: the RQ-VAE config was inferred from the tensor shapes "
                     "(256x256 images assumed; quantizer decay 0.99 and code restarts, the training recipe and the "
                     "data config are rq_jax defaults)")
    for key, supported in (("hparams.bottleneck_type", "rq"), ("ddconfig.double_z", False),
                           ("hparams.shared_codebook", True)):
        value = _get(arch, key, _MISSING)
        if value is not _MISSING and value != supported:
            raise ValueError(f"{where}: arch.{key} = {value!r} is not supported (rq_jax needs {supported!r}).")
    resolution = int(_get(arch, "ddconfig.resolution", 256))
    fields = rqvae_fields_from_shapes(shapes, resolution)
    level_res = {resolution // 2**i for i in range(len(fields["ch_mult"]))}
    for field, (key, tensor) in _RQVAE_YAML.items():
        value = _get(arch, key, _MISSING)
        if value is _MISSING:
            continue
        got = _norm(value)
        if field == "attn_resolutions":  # resolutions that no level has add no attention
            got = tuple(r for r in level_res if r in set(got))
            if sorted(got) != sorted(fields[field]):
                raise _disagree(where, f"arch.{key}", value, field, fields[field], tensor)
            continue
        if got != fields[field]:
            raise _disagree(where, f"arch.{key}", value, field, fields[field], tensor)
    c = _stage1_base(_dataset_type(yaml_cfg))
    c.model.update(fields)
    if yaml_cfg is not None:
        c.model.dropout = float(_get(arch, "ddconfig.dropout", 0.0))
        c.model.quantizer.decay = float(_get(arch, "hparams.decay", 0.99))
        c.model.quantizer.restart = bool(_get(arch, "hparams.restart_unused_codes", False))
        c.loss.recon = "l2" if _get(arch, "hparams.loss_type", "l1") == "mse" else "l1"
        betas = _get(yaml_cfg, "optimizer.betas")
        if betas:
            c.train.b1, c.train.b2 = (float(b) for b in betas)
        for key, field in _RQVAE_RECIPE:
            value = _get(yaml_cfg, key)
            if value is not None:
                _set(c, field, value)
    return c, notes


# (model field, yaml key, the tensor that shows it)
_RQT_YAML = (
    ("d_model", "arch.embed_dim", "pos_emb_hw"),
    ("embed_dim", "arch.input_embed_dim", "input_mlp.weight"),
    ("vocab_size", "arch.vocab_size", "classifier.linear.weight"),
    ("vocab_size", "dataset.vocab_size", "classifier.linear.weight"),
    ("spatial_layers", "arch.body.n_layer", "body_transformer.blocks.*"),
    ("depth_layers", "arch.head.n_layer", "head_transformer.blocks.*"),
)
# official flags (value when absent: the official default) and the only value rq_jax supports
_RQT_FLAGS = {"input_emb_vqvae": (False, True), "head_emb_vqvae": (False, True), "cumsum_depth_ctx": (False, True),
              "shared_cls_emb": (False, True), "use_padding_emb": (False, False),
              "scaled_head_emb_vqvae": (False, False)}
_BLOCK_FLAGS = {"mlp_bias": (True, True), "attn_bias": (True, True), "gelu": ("v1", "v1")}
_RQT_RECIPE = (
    ("loss.temp", "soft.temperature"), ("loss.stochastic_codes", "soft.stochastic_codes"),
    ("optimizer.init_lr", "train.lr"), ("optimizer.weight_decay", "train.weight_decay"),
    ("experiment.total_batch_size", "train.batch_size"), ("experiment.epochs", "train.num_epochs"),
)


def _cond_of(block_size_cond: int, vocab_size_cond: int) -> dict[str, Any]:
    if block_size_cond > 1:
        return dict(cond="text", text_len=block_size_cond, text_vocab_size=vocab_size_cond)
    if vocab_size_cond <= 1:
        return dict(cond="none")
    return dict(cond="class", num_classes=vocab_size_cond)


def _sample_value(value: Any, off: Any, cast: Callable[[Any], Any]) -> Any:
    if value is None:
        return off
    if isinstance(value, list | tuple):
        values = tuple(off if v is None else cast(v) for v in value)
        return values[0] if len(set(values)) == 1 else values
    return cast(value)


def stage2_config_from_official(
    shapes: Mapping[str, tuple[int, ...]],
    yaml_cfg: Mapping[str, Any] | None,
    stage1_config: ml_collections.ConfigDict,
    where: str = "the stage-2 checkpoint",
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The rq_jax stage-2 run config of an official RQ-Transformer over `stage1_config`, and notes.

    The yaml is cross-checked with the shapes (`model_config_from_official`) and with the stage-1 model.
    """
    from rq_jax.config_lib import transformer_config

    notes: list[str] = []
    arch = _get(yaml_cfg, "arch", {}) or {}
    if yaml_cfg is None:
        notes.append(f"note: {where} has no config.yaml: the RQ-Transformer config was inferred from the tensor "
                     "shapes (num_heads = d_model / 64 and square code maps assumed; dropout rates, the training "
                     "recipe and the sampling settings are rq_jax defaults)")
    for key, (default, supported) in _RQT_FLAGS.items():
        if yaml_cfg is not None and arch.get(key, default) != supported:
            raise ValueError(f"{where}: arch.{key} = {arch.get(key, default)!r} is not supported (rq_jax needs "
                             f"{supported!r}).")
    for stack in ("body", "head"):
        for key, (default, supported) in _BLOCK_FLAGS.items():
            value = _get(arch, f"{stack}.block.{key}", default)
            if value != supported:
                raise ValueError(f"{where}: arch.{stack}.block.{key} = {value!r} is not supported (rq_jax needs "
                                 f"{supported!r}).")
    heads = {s: _get(arch, f"{s}.block.n_head") for s in ("body", "head")}
    if None not in heads.values() and heads["body"] != heads["head"]:
        raise ValueError(f"{where}: arch.body.block.n_head = {heads['body']} and arch.head.block.n_head = "
                         f"{heads['head']} differ; rq_jax uses one head count for both transformers.")
    num_heads = heads["body"] or heads["head"]
    block_size = _get(arch, "block_size")
    model = tf_convert.model_config_from_official(
        shapes, num_heads=None if num_heads is None else int(num_heads),
        code_shape=None if block_size is None else tuple(int(s) for s in block_size),
    )
    h, w, depth = model.code_shape
    if (h * w, depth) != (shapes["pos_emb_hw"][-2], shapes["pos_emb_d"][-2]):
        raise _disagree(where, "arch.block_size", block_size, "positions x depth",
                        (shapes["pos_emb_hw"][-2], shapes["pos_emb_d"][-2]), "pos_emb_hw / pos_emb_d")
    for field, key, tensor in _RQT_YAML:
        value = _get(yaml_cfg, key)
        if value is not None and _norm(value) != model[field]:
            raise _disagree(where, key, value, field, model[field], tensor)
    if yaml_cfg is not None and ("vocab_size_cond" in arch or "block_size_cond" in arch):
        want = _cond_of(int(arch.get("block_size_cond", 0)), int(arch.get("vocab_size_cond", 0)))
        got = {k: model[k] for k in want}
        if want != got:
            raise _disagree(where, "arch.vocab_size_cond / block_size_cond",
                            (arch.get("vocab_size_cond"), arch.get("block_size_cond")), "the condition", got,
                            "cond_emb.weight / pos_emb_cond")
    if model.cond == "text":
        for key, field in (("dataset.context_length", "text_len"), ("dataset.vocab_size_txt", "text_vocab_size")):
            value = _get(yaml_cfg, key)
            if value is not None and int(value) != model[field]:
                raise _disagree(where, key, value, field, model[field], "pos_emb_cond / cond_emb.weight")
    if yaml_cfg is not None:
        model.dropout = float(_get(arch, "body.block.resid_pdrop", 0.1))
        model.attn_dropout = float(_get(arch, "body.block.attn_pdrop", 0.0))
        model.embd_dropout = float(_get(arch, "embd_pdrop", 0.0))

    m1 = stage1_config.model
    have = (int(m1.codebook_size), int(m1.embed_dim), tuple(m1.code_shape))
    want = (int(model.vocab_size), int(model.embed_dim), tuple(model.code_shape))
    if have != want:
        raise ValueError(
            f"{where} models K={want[0]} codes of n_z={want[1]} in a {want[2]} code map, but its stage-1 RQ-VAE "
            f"has K={have[0]}, n_z={have[1]}, code shape {have[2]}: pass the matching stage-1 checkpoint (--stage1)."
        )
    c = transformer_config(stage1_config)
    for key in model.keys():
        if key not in ("vocab_size", "embed_dim", "code_shape"):  # references to the stage-1 model's fields
            c.model[key] = model[key]
    if yaml_cfg is not None:
        betas = _get(yaml_cfg, "optimizer.betas")
        if betas:
            c.train.b1, c.train.b2 = (float(b) for b in betas)
        max_gn = _get(yaml_cfg, "optimizer.max_gn", _MISSING)
        if max_gn is not _MISSING:
            c.train.grad_clip = float(max_gn or 0.0)
        loss_type = _get(yaml_cfg, "loss.type")
        if loss_type is not None:
            c.soft.soft_labels = loss_type == "soft_target_cross_entropy"
        for key, field in _RQT_RECIPE:
            value = _get(yaml_cfg, key)
            if value is not None:
                _set(c, field, value)
        sampling = _get(yaml_cfg, "sampling") or _get(yaml_cfg, "experiment.sample") or {}
        sample = c.sample.to_dict()
        if "top_k" in sampling:
            sample["top_k"] = _sample_value(sampling["top_k"], 0, int)
        if "top_p" in sampling:
            sample["top_p"] = _sample_value(sampling["top_p"], 1.0, float)
        for key in ("temp", "temperature"):
            if key in sampling:
                sample["temperature"] = _sample_value(sampling[key], 1.0, float)
        c.sample = ml_collections.ConfigDict(sample)
    return c, notes


# ---------------------------------------------------------------------------------------------------
# Tensors: official state dicts -> the trainers' checkpoint states
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ConvertedStage:
    """One converted run: its config, the state tree the trainer would save, and report lines."""

    stage: str
    config: ml_collections.ConfigDict
    state: dict[str, Any]
    report: list[str]


def layout_from_official(stage: str, path: tuple[Any, ...], array: np.ndarray) -> np.ndarray:
    """The rq_jax layout of the official tensor of the parameter at `path` (the converters' own functions).

    Stage 1: conv weights (out, in, kh, kw) -> kernels (kh, kw, in, out). Stage 2: linear weights (out, in) ->
    kernels (in, out), positional embeddings (1, L, C) -> (L, C). Everything else is unchanged.
    """
    if stage == STAGE1:
        return vae_convert.from_torch_layout(array)
    return tf_convert.from_official_layout(path, array)


def _layout_note(src: tuple[int, ...], dst: tuple[int, ...], path: tuple[Any, ...]) -> str:
    leaf = str(path[-1])
    if len(src) == 4:
        return "conv OIHW -> HWIO"
    if leaf == "kernel" and len(src) == 2:
        return "linear (out, in) -> (in, out)"
    if len(src) == len(dst) + 1:
        return "leading 1 dropped"
    return "copied"


def _cast_flat(flat: list[tuple[tuple[Any, ...], Any]], abstract: dict) -> list[tuple[tuple[Any, ...], Any]]:
    out = []
    for path, value in flat:
        target = abstract[path].get_value()
        if isinstance(value, tuple):  # CodebookState
            value = type(value)(*(np.asarray(v, t.dtype) for v, t in zip(value, target, strict=True)))
        else:
            value = np.asarray(value, target.dtype)
        out.append((path, value))
    return out


def convert_stage1(state_dict: Mapping[str, np.ndarray], config: ml_collections.ConfigDict) -> ConvertedStage:
    """The stage-1 trainer state (`gen` params + `codebook`) of an official RQ-VAE state dict, as numpy.

    Nothing is materialised beyond layout views of the inputs, so zero-stride (`np.broadcast_to`) stand-ins
    give a shape-only pass over full-size models.
    """
    from rq_jax.models.rqvae import RQVAE, CodebookVar

    model = nnx.eval_shape(lambda: RQVAE(config.model, rngs=nnx.Rngs(0)))
    abstract = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    abstract.update(nnx.to_flat_state(nnx.state(model, CodebookVar)))
    state, unused = vae_convert.rqvae_state_from_official(state_dict, model)
    nnx.update(model, nnx.from_flat_state(_cast_flat(nnx.to_flat_state(state), abstract)))
    _, gen, codebook = nnx.split(model, nnx.Param, CodebookVar)

    report = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = vae_convert.official_name(path)
        src, dst = tuple(state_dict[name].shape), tuple(var.get_value().shape)
        report.append(f"stage1  {name} {src} -> gen/{'/'.join(map(str, path))} {dst}  "
                      f"{_layout_note(src, dst, path)}")
    k = int(config.model.codebook_size)
    pad = np.asarray(state_dict["quantizer.codebooks.0.weight"][k:])
    pad_note = "its zero padding row dropped" if not np.any(pad) else "WARNING: its padding row is not zero; dropped"
    targets = {"weight": "embedding_KxC", "cluster_size_ema": "cluster_size_K", "embed_ema": "embed_sum_KxC"}
    for d in range(model.depth):
        for key, field in targets.items():
            name = f"quantizer.codebooks.{d}.{key}"
            shape = tuple(state_dict[name].shape)
            if d == 0:
                dst = tuple(getattr(model.codebook_state, field).shape)
                extra = f"  {pad_note}" if key == "weight" else ""
                report.append(f"stage1  {name} {shape} -> codebook/{field} {dst}{extra}")
            else:
                report.append(f"stage1  {name} {shape} -> alias of quantizer.codebooks.0.{key} (shared codebook, "
                              "checked equal)")
    report += [f"stage1  ignored: {n} {tuple(state_dict[n].shape)}: not a parameter of the rq_jax RQ-VAE"
               for n in unused]
    return ConvertedStage(STAGE1, config, {"step": np.int32(0), "gen": gen, "codebook": codebook}, report)


def convert_stage2(state_dict: Mapping[str, np.ndarray], config: ml_collections.ConfigDict) -> ConvertedStage:
    """The stage-2 trainer state (`params`) of an official RQ-Transformer state dict, as numpy (see convert_stage1)."""
    from rq_jax.models.rq_transformer import RQTransformer

    model = nnx.eval_shape(lambda: RQTransformer(config.model, rngs=nnx.Rngs(0)))
    abstract = dict(nnx.to_flat_state(nnx.state(model)))
    state, unused = tf_convert.rq_transformer_state_from_official(state_dict, model)
    nnx.update(model, nnx.from_flat_state(_cast_flat(nnx.to_flat_state(state), abstract)))
    report = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = tf_convert.official_name(path)
        src, dst = tuple(state_dict[name].shape), tuple(var.get_value().shape)
        report.append(f"stage2  {name} {src} -> params/{'/'.join(map(str, path))} {dst}  "
                      f"{_layout_note(src, dst, path)}")
    report += [f"stage2  ignored: {n} {tuple(state_dict[n].shape)}: not a parameter of the rq_jax RQ-Transformer"
               for n in unused]
    return ConvertedStage(STAGE2, config, {"step": np.int32(0), "params": nnx.state(model)}, report)


# ---------------------------------------------------------------------------------------------------
# The text tokenizer (CC-3M)
# ---------------------------------------------------------------------------------------------------
def find_tokenizer_files(yaml_cfg: Mapping[str, Any] | None, dirs: list[str]) -> tuple[str, str]:
    """(vocab.json, merges.txt) of the official CharBPE tokenizer named in the yaml, from the first dir having them."""
    name = str(_get(yaml_cfg, "dataset.txt_tok_name") or "bpe16k_huggingface")
    if name not in TOKENIZER_PREFIXES:
        raise ValueError(f"dataset.txt_tok_name = {name!r} is not supported; rq_jax reads the CharBPE tokenizers "
                         f"{', '.join(TOKENIZER_PREFIXES)}.")
    prefix = TOKENIZER_PREFIXES[name]
    for d in dirs:
        for vocab, merges in ((f"{prefix}-vocab.json", f"{prefix}-merges.txt"), ("vocab.json", "merges.txt")):
            if os.path.isfile(os.path.join(d, vocab)) and os.path.isfile(os.path.join(d, merges)):
                return os.path.join(d, vocab), os.path.join(d, merges)
    raise FileNotFoundError(
        f"The text-conditioned model needs the {name} tokenizer files {prefix}-vocab.json and {prefix}-merges.txt, "
        f"not found in {', '.join(dirs)}: pass --tokenizer_dir with the folder holding them "
        f"(rqvae/txtimg_datasets/tokenizers/pretrained/ of {OFFICIAL_REPO})."
    )


def build_tokenizer(vocab: str, merges: str) -> Any:
    """The official text tokenizer: CharBPE, lower-cased, '[UNK]' unknown token, '[PAD]' special token."""
    from tokenizers import CharBPETokenizer

    tok = CharBPETokenizer.from_file(vocab, merges, unk_token="[UNK]", lowercase=True)
    tok.add_special_tokens(["[PAD]"])
    return tok


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------
def _stage1_candidates(stage2: OfficialCheckpoint) -> list[str]:
    here = os.path.dirname(stage2.path)
    out = []
    vqvae = _get(stage2.yaml, "vqvae")
    ref = _get(vqvae, "ckpt") if isinstance(vqvae, Mapping) else vqvae
    if isinstance(ref, str) and ref:
        out += [ref, os.path.join(here, ref)]
        parent = os.path.basename(os.path.dirname(os.path.normpath(ref)))
        if parent:
            out.append(os.path.join(here, "..", parent, os.path.basename(ref)))
    out.append(os.path.join(here, "..", "stage1"))
    return [os.path.normpath(p) for p in out]


def _write_run(workdir: str, converted: ConvertedStage, source: OfficialCheckpoint) -> None:
    from rq_jax.checkpoints import Checkpointer

    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(workdir, max_to_keep=1, async_save=False, with_data=False)
    ckpt.save(0, converted.state, force=True)
    ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(converted.config.to_json_best_effort(indent=2))
    if source.yaml_path:
        shutil.copyfile(source.yaml_path, os.path.join(workdir, "official_config.yaml"))
    with open(os.path.join(workdir, "LICENSE_WEIGHTS.txt"), "w") as f:
        f.write(LICENSE_TEXT)


def convert_official(
    ckpt: str,
    out: str,
    *,
    stage1: str | None = None,
    tokenizer_dir: str | None = None,
    allow_pickle: bool = False,
    ema: bool = False,
) -> list[str]:
    """Converts an official checkpoint (and, for stage 2, its stage-1 RQ-VAE) into OUT/stage1[, OUT/stage2].

    Everything is read and checked before anything is written. Returns the report lines (also written to
    OUT/conversion_report.txt).
    """
    out = os.path.abspath(out)
    main = read_official_checkpoint(ckpt, allow_pickle=allow_pickle, ema=ema)
    stage = checkpoint_stage(main.shapes, main.yaml, main.path)
    report = [f"rq_jax.convert official: {main.path} ({stage}; config.yaml: {main.yaml_path or 'none'})"]
    if stage == STAGE1:
        if stage1 is not None:
            raise ValueError(f"{main.path} is a stage-1 (RQ-VAE) checkpoint: --stage1 is only for stage-2 checkpoints.")
        first, second = main, None
    else:
        if stage1 is None:
            tried = _stage1_candidates(main)
            found = [p for p in tried if os.path.isfile(p) or os.path.isfile(os.path.join(p, "model.pt"))]
            if not found:
                raise FileNotFoundError(
                    f"{main.path} is a stage-2 (RQ-Transformer) checkpoint and its stage-1 RQ-VAE was not found "
                    f"(tried {', '.join(tried)}): pass --stage1 with its folder or model.pt."
                )
            stage1 = found[0]
        first, second = read_official_checkpoint(stage1, allow_pickle=allow_pickle, ema=ema), main
        if checkpoint_stage(first.shapes, first.yaml, first.path) != STAGE1:
            raise ValueError(f"--stage1 {first.path} is not a stage-1 (RQ-VAE) checkpoint.")
        if first.yaml is None and isinstance(_get(main.yaml, "vqvae.hparams"), Mapping):
            first.yaml = {"arch": main.yaml["vqvae"]}  # the stage-1 arch recorded in the stage-2 yaml
            report.append(f"note: no config.yaml beside {first.path}: its arch was read from the `vqvae` entry of "
                          f"{main.yaml_path}")
        report.append(f"source of stage 1: {first.path} (config.yaml: {first.yaml_path or 'none'})")

    dirs = {STAGE1: os.path.join(out, "stage1"), STAGE2: os.path.join(out, "stage2")}
    for d in dirs.values() if second is not None else [dirs[STAGE1]]:
        if os.path.exists(os.path.join(d, "checkpoints")):
            raise FileExistsError(f"{d} already holds a checkpoint: choose another --out or delete it.")

    config1, notes1 = stage1_config_from_official(first.shapes, first.yaml, first.path)
    converted = [convert_stage1(first.state_dict, config1)]
    report += first.notes + notes1
    tokenizer = None
    if second is not None:
        config2, notes2 = stage2_config_from_official(second.shapes, second.yaml, config1, second.path)
        config2.rqvae_workdir = dirs[STAGE1]
        report += second.notes + notes2
        if config2.model.cond == "text":
            here = os.path.dirname(second.path)
            search = [tokenizer_dir] if tokenizer_dir else [here, os.path.join(here, ".."),
                                                            os.path.join(here, "tokenizer")]
            vocab, merges = find_tokenizer_files(second.yaml, [os.path.normpath(d) for d in search])
            tokenizer = (vocab, merges, build_tokenizer(vocab, merges))
            size = tokenizer[2].get_vocab_size()
            if size > config2.model.text_vocab_size:
                raise ValueError(f"The tokenizer {vocab} has {size} tokens but the model's cond_emb has "
                                 f"{config2.model.text_vocab_size} rows: it is not this model's tokenizer.")
            config2.text.tokenizer = os.path.join(dirs[STAGE2], "tokenizer")
            config2.text.vocab_size = size
            report.append(f"text tokenizer: {vocab} + {merges} ({size} tokens, lower-cased CharBPE) -> "
                          f"{dirs[STAGE2]}/tokenizer.json and {config2.text.tokenizer}/")
        elif tokenizer_dir:
            report.append("note: --tokenizer_dir ignored: the model is not text-conditioned")
        converted.append(convert_stage2(second.state_dict, config2))
    for c in converted:
        report += c.report
    counts = {c.stage: (sum(" -> " in r and "alias" not in r for r in c.report),
                        sum("alias of" in r for r in c.report), sum("ignored:" in r for r in c.report))
              for c in converted}
    for s, (n, a, i) in counts.items():
        report.append(f"summary {s}: {n} tensors converted, {a} codebook aliases, {i} ignored -> {dirs[s]}")

    for c, source in zip(converted, [first, second], strict=False):
        _write_run(dirs[c.stage], c, source)
    if tokenizer is not None:
        vocab, merges, tok = tokenizer
        tok_dir = os.path.join(dirs[STAGE2], "tokenizer")
        os.makedirs(tok_dir, exist_ok=True)
        shutil.copyfile(vocab, os.path.join(tok_dir, "vocab.json"))
        shutil.copyfile(merges, os.path.join(tok_dir, "merges.txt"))
        tok.save(os.path.join(tok_dir, "tokenizer.json"))
        tok.save(os.path.join(dirs[STAGE2], "tokenizer.json"))
    with open(os.path.join(out, "LICENSE_WEIGHTS.txt"), "w") as f:
        f.write(LICENSE_TEXT)
    with open(os.path.join(out, "conversion_report.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `official` subcommand's flags."""
    parser.add_argument("--ckpt", required=True, help="official checkpoint: its folder (model.pt + config.yaml) or "
                        "the .pt file; stage 1 (RQ-VAE) or stage 2 (RQ-Transformer)")
    parser.add_argument("--stage1", default=None, help="for a stage-2 --ckpt: its stage-1 RQ-VAE checkpoint "
                        "(default: the config.yaml's vqvae path, else ../stage1)")
    parser.add_argument("--tokenizer_dir", default=None, help="text models (CC-3M): the folder with "
                        "bpe-16k-vocab.json and bpe-16k-merges.txt (default: beside the checkpoint)")
    parser.add_argument("--out", required=True, help="output folder: OUT/stage1, OUT/stage2 run directories")
    parser.add_argument("--ema", action="store_true", help="convert the file's state_dict_ema instead of state_dict")
    parser.add_argument("--allow_pickle", action="store_true", help="let torch.load unpickle Python objects "
                        "(only for files you trust, e.g. the official release)")


def run(args: argparse.Namespace) -> None:
    """Runs the conversion and prints the report's notes and summary (the full report is in OUT)."""
    try:
        report = convert_official(args.ckpt, args.out, stage1=args.stage1, tokenizer_dir=args.tokenizer_dir,
                                  allow_pickle=args.allow_pickle, ema=args.ema)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise SystemExit(f"rq_jax.convert official: {message}") from e
    for line in report:
        if not line.startswith(("stage1  ", "stage2  ")) or "ignored:" in line or "WARNING" in line:
            print(line)
    print(f"per-tensor report: {os.path.join(os.path.abspath(args.out), 'conversion_report.txt')}; the weights keep "
          "the official CC-BY-NC-SA 4.0 licence (non-commercial, share-alike): see LICENSE_WEIGHTS.txt")
