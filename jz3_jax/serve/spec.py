"""What `serve` reads."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.decoding.spec import DecodeSpec
from jz3_jax.serve.config import ServeConfig


@dataclasses.dataclass(frozen=True)
class ServeSpec(DecodeSpec):
    serve: ServeConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ()
    PRODUCES: ClassVar[tuple[str, ...]] = ()
