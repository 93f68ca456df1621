"""Dataclass schemas -> ml_collections ConfigDicts: each default is written once, in a dataclass.

A component's options (the quantizer, the RQ-VAE, the RQ-Transformer, the data pipeline) are a frozen
dataclass; `config_dict(Schema(), overrides, name)` turns its fields and defaults into the ConfigDict that
run configs hold (`config.model`, `config.data`, ...), so the list of known fields, the defaults and the
command-line overridable keys cannot drift apart. Conventions:

- a field whose metadata has `config=False` is left out (derived elsewhere, e.g. the quantizer depth comes
  from `code_shape`);
- a nested dataclass becomes a nested ConfigDict, overridden field by field;
- an optional field (`str | None = None`) becomes a typed placeholder, so `--config.data.limit=256` works;
- a field whose metadata has `any_type=True` becomes a FieldReference of type object (a number, a tuple or a
  string may be set, e.g. the soft-label temperature);
- a dict becomes a nested ConfigDict (e.g. the mesh shape);
- lists become tuples (ConfigDicts hold the tuples that the models read).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict as cd


def config_fields(schema: type | Any) -> tuple[str, ...]:
    """The names of a schema's fields that appear in its ConfigDict, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(schema) if f.metadata.get("config", True))


def _placeholder_type(hint: Any) -> type | None:
    """`str` for `str | None` (an optional field), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and type(None) in typing.get_args(hint):
            return args[0]
    return None


def _value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_config_dict(value)
    if isinstance(value, dict):
        return ml_collections.ConfigDict(value)
    return tuple(value) if isinstance(value, list) else value


def to_config_dict(obj: Any) -> ml_collections.ConfigDict:
    """The ConfigDict of a dataclass instance (see the module docstring for the conventions)."""
    hints = typing.get_type_hints(type(obj))
    out = ml_collections.ConfigDict()
    for field in dataclasses.fields(obj):
        if not field.metadata.get("config", True):
            continue
        value, optional = getattr(obj, field.name), _placeholder_type(hints[field.name])
        if field.metadata.get("any_type", False):
            out[field.name] = ml_collections.FieldReference(value, field_type=object)
        elif value is None and optional is not None:
            out[field.name] = cd.placeholder(optional)
        else:
            out[field.name] = _value(value)
    return out


def config_dict(default: Any, overrides: Mapping[str, Any], name: str) -> ml_collections.ConfigDict:
    """`to_config_dict(default)` with `overrides` applied; an unknown field raises one ValueError naming it.

    A nested ConfigDict field takes a mapping and updates only the fields it names.
    """
    cfg = to_config_dict(default)
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"Unknown {name} field {key!r}; known: {', '.join(cfg.keys())}.")
        if isinstance(cfg[key], ml_collections.ConfigDict):
            for sub_key, sub_value in dict(value).items():
                if sub_key not in cfg[key]:
                    raise ValueError(f"Unknown {key} field {sub_key!r}; known: {', '.join(cfg[key].keys())}.")
                cfg[key][sub_key] = _value(sub_value)
        else:
            cfg[key] = _value(value)
    return cfg
