"""`key.path=value` overrides, parsed to the type the schema declares."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from jz3_jax.errors import ConfigError

__all__ = ["ConfigError", "apply_overrides", "flat_keys", "parse_override", "parse_value", "set_key"]


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    """All leaf keys of a dataclass config as dotted paths."""
    keys = []
    for name, tp in _field_types(type(cfg)).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            keys += flat_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse `text` as type `tp` (int, float, bool, str, list[...]); raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (str,)
        items = [] if text == "" else text.split(",")
        return [parse_value(item.strip(), item_tp, key) for item in items]
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if tp is int:
            as_float = float(text)
            if not as_float.is_integer():
                raise ValueError(text)
            return int(as_float) if "e" in text.lower() or "." in text else int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"config key {key!r} expects {name}, got {text!r}") from None
    raise ConfigError(f"config key {key!r} has a type ({tp}) that overrides cannot set")


def parse_override(text: str) -> tuple[str, str]:
    """Split `key.path=value` into its key and raw value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, value = text.split("=", 1)
    return key.strip(), value


def _unknown_key(key: str, cfg: Any) -> ConfigError:
    keys = flat_keys(cfg)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:  # match on the last component too ("lr" -> optimizer.lr)
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def set_key(cfg: Any, key: str, raw: str) -> None:
    """Set one dotted key on a dataclass config from its raw string value."""
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        types = _field_types(type(node)) if dataclasses.is_dataclass(node) else {}
        if part not in types:
            raise _unknown_key(key, cfg)
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"config key {key!r} is a section; set one of its keys instead")
            setattr(node, part, parse_value(raw, types[part], key))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise _unknown_key(key, cfg)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply `key.path=value` strings in order (in place) and return the config."""
    for text in overrides:
        key, raw = parse_override(text)
        set_key(cfg, key, raw)
    return cfg
