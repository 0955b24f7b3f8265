"""Build a stage's typed spec from the root config: the spec's fields name the sections it reads
(and `seed`), so a stage never sees the root `Config` and the pipeline knows which sections decide
a step's output."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, TypeVar

from jz3_jax.config.schema import Config

S = TypeVar("S")


def spec_sections(spec_type: type) -> tuple[str, ...]:
    """The root-config names a spec type reads (its dataclass fields), in declaration order."""
    return tuple(f.name for f in dataclasses.fields(spec_type))


def build_spec(spec_type: type[S], cfg: Config) -> S:
    """A `spec_type` holding copies of the sections of `cfg` it declares (a stage that adjusts its
    sections never changes the caller's config)."""
    unknown = [name for name in spec_sections(spec_type) if not hasattr(cfg, name)]
    if unknown:
        raise TypeError(f"{spec_type.__name__} names {unknown}, which the root config does not have")
    return spec_type(**{name: copy.deepcopy(getattr(cfg, name)) for name in spec_sections(spec_type)})


def resolved_sections(spec_type: type, cfg: Config) -> dict[str, Any]:
    """The fully resolved values (defaults included) of the sections `spec_type` reads, as JSON."""
    return {name: _plain(getattr(cfg, name)) for name in spec_sections(spec_type)}


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
