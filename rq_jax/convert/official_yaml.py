"""The official config.yaml as data: reading it, looking values up, comparing them with rq_jax config values.

Also which stage a checkpoint is (`checkpoint_stage`), from its tensor names checked against the yaml.
PyYAML is imported only when a yaml file is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

STAGE1, STAGE2 = "rqvae", "rq_transformer"
YAML_MISSING = ("Reading the official config.yaml needs PyYAML: install it with `pip install pyyaml` "
                "(or `pip install -e .[convert]`).")
MISSING = object()  # the default of `yaml_value` that tells an absent key from an explicit null


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


def yaml_value(tree: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    """The value at the dotted key (`arch.ddconfig.ch`) of nested mappings, `default` where any part is absent."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def comparable(value: Any) -> Any:
    """yaml values comparable with config values: lists -> tuples of ints, numbers -> int where exact."""
    if isinstance(value, list | tuple):
        return tuple(comparable(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def set_config_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
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


def set_recipe(config: ml_collections.ConfigDict, yaml_cfg: Mapping[str, Any],
               recipe: tuple[tuple[str, str], ...]) -> None:
    """Copies each (yaml key, config field) of `recipe` whose key the yaml has, and the optimizer's betas."""
    betas = yaml_value(yaml_cfg, "optimizer.betas")
    if betas:
        config.train.b1, config.train.b2 = (float(b) for b in betas)
    for key, field in recipe:
        value = yaml_value(yaml_cfg, key)
        if value is not None:
            set_config_field(config, field, value)


def disagreement(where: str, yaml_key: str, given: Any, field: str, value: Any, tensor: str) -> ValueError:
    """The error for a yaml value that the tensor shapes contradict, naming both."""
    return ValueError(f"{where}: config.yaml has {yaml_key} = {given!r} but the checkpoint's {tensor} gives "
                      f"{field} = {value!r}.")


def checkpoint_stage(shapes: Mapping[str, tuple[int, ...]], yaml_cfg: Mapping[str, Any] | None, where: str) -> str:
    """STAGE1 or STAGE2, from the tensor names, checked against the yaml's `arch.type`."""
    if any(k.startswith("quantizer.codebooks.") for k in shapes):
        by_shape = STAGE1
    elif "pos_emb_hw" in shapes:
        by_shape = STAGE2
    else:
        raise ValueError(f"{where} is neither an official RQ-VAE (quantizer.codebooks.*) nor an RQ-Transformer "
                         "(pos_emb_hw) state dict.")
    arch_type = yaml_value(yaml_cfg, "arch.type")
    if arch_type is not None:
        by_yaml = {"rq-vae": STAGE1, "rq-transformer": STAGE2}.get(str(arch_type).lower())
        if by_yaml is None:
            raise ValueError(f"{where}: arch.type {arch_type!r} is not supported (only rq-vae and rq-transformer).")
        if by_yaml != by_shape:
            raise ValueError(f"{where}: config.yaml says arch.type {arch_type!r} but the tensors are an {by_shape} "
                             "state dict.")
    return by_shape
