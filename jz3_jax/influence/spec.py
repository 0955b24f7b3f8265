"""What the `select` stage reads: the reference model, its warm-up's optimizer, LoRA and train
settings (`influence/warmup.py` builds the trainer's `TrainSpec` from them) and `select`."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.influence.config import SelectConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.config import MeshConfig
from jz3_jax.train.config import LoraConfig, OptimizerConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class SelectSpec:
    seed: int
    model: ModelConfig
    mesh: MeshConfig
    optimizer: OptimizerConfig
    train: TrainConfig
    lora: LoraConfig
    select: SelectConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ("corpus.snippets",)
    PRODUCES: ClassVar[tuple[str, ...]] = ("select.selected", "select.scores", "select.report")
