"""The `convert` stage's config section (`cfg.convert`): a plain dataclass (a leaf module)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ConvertConfig:
    """`convert` stage: src is a HF dir, an orbax checkpoint dir or a .gguf file."""

    src: str = ""
    dst: str = ""
    dst_format: str = "orbax"  # orbax | hf
