"""What `bench` reads: the model and the sections of the kind of work it times."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.bench.config import BenchConfig
from jz3_jax.decoding.config import EngineConfig, SamplingConfig
from jz3_jax.influence.config import SelectConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.config import MeshConfig
from jz3_jax.train.config import LoraConfig, OptimizerConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    seed: int
    model: ModelConfig
    mesh: MeshConfig
    engine: EngineConfig
    sampling: SamplingConfig  # synthesis: max_new_tokens is the cap on a request's new tokens
    optimizer: OptimizerConfig
    train: TrainConfig
    lora: LoraConfig
    select: SelectConfig
    bench: BenchConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ()
    PRODUCES: ClassVar[tuple[str, ...]] = ()
