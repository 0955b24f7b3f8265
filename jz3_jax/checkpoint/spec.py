"""What `convert` reads."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.checkpoint.config import ConvertConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.config import MeshConfig


@dataclasses.dataclass(frozen=True)
class ConvertSpec:
    seed: int
    model: ModelConfig
    mesh: MeshConfig
    convert: ConvertConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ()
    PRODUCES: ClassVar[tuple[str, ...]] = ()
