"""Load a config from a Python file (`get_config()`) or a resolved `config.json`, and save it."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import typing
from pathlib import Path
from typing import Any

from jz3_jax.config.overrides import ConfigError, _field_types, _unknown_key
from jz3_jax.config.schema import Config
from jz3_jax.runtime.paths import atomic_write


def config_to_dict(cfg: Any) -> dict:
    """The config as plain JSON-able nested dicts."""
    return dataclasses.asdict(cfg)


def _check_value(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (str,)
        return [_check_value(v, item_tp, key) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"config key {key!r} expects {tp.__name__}, got {value!r}")
    return value


def _fill(node: Any, data: dict, root: Any, prefix: str) -> None:
    types = _field_types(type(node))
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in types:
            raise _unknown_key(key, root)
        current = getattr(node, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} is a section; expected an object, got {value!r}")
            _fill(current, value, root, key + ".")
        else:
            setattr(node, name, _check_value(value, types[name], key))


def config_from_dict(data: dict) -> Config:
    """Build a `Config` from nested dicts; unknown keys and wrong types raise ConfigError."""
    cfg = Config()
    _fill(cfg, data, cfg, "")
    return cfg


def validate(cfg: Config) -> Config:
    """Re-check every value's type (a Python config file can assign anything)."""
    return config_from_dict(config_to_dict(cfg))


def load_config(path: str | os.PathLike) -> Config:
    """Load `configs/NAME.py` (which defines `get_config()`) or a resolved `config.json`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid JSON: {e}") from None
        return config_from_dict(data)
    if path.suffix != ".py":
        raise ConfigError(f"config file {str(path)!r} must be a .py (defining get_config()) or a .json")
    spec = importlib.util.spec_from_file_location(f"_jz3_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} does not define get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"get_config() in {str(path)!r} returned {type(cfg).__name__}, not Config")
    return validate(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON (atomically: a temp file renamed into place; gs:// works)."""
    with atomic_write(path) as f:
        f.write(json.dumps(config_to_dict(cfg), indent=2) + "\n")
