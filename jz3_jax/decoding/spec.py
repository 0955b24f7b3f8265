"""What every stage that decodes reads: the model, the engine, the sampling defaults and the seed.
`synthesize`, `eval` and `serve` extend it with their own section."""

from __future__ import annotations

import dataclasses

from jz3_jax.decoding.config import EngineConfig, SamplingConfig
from jz3_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    seed: int
    model: ModelConfig
    engine: EngineConfig
    sampling: SamplingConfig
