"""Typed, nested configuration: dataclass schema, Python/JSON config files, `key.path=value` overrides."""

from jz3_jax.errors import ConfigError
from jz3_jax.config.schema import Config
from jz3_jax.config.overrides import apply_overrides, parse_override, flat_keys
from jz3_jax.config.loading import load_config, config_to_dict, config_from_dict, save_config
from jz3_jax.config.specs import build_spec, resolved_sections, spec_sections

__all__ = [
    "Config",
    "ConfigError",
    "apply_overrides",
    "parse_override",
    "flat_keys",
    "load_config",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "build_spec",
    "resolved_sections",
    "spec_sections",
]
