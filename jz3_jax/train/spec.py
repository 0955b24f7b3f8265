"""What training reads: `TrainSpec` for `sft`, `pretrain` and select's warm-up; `CompileSpec` for
`compile`, which builds the same programs for a TPU topology (and the engine's decode step)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.data.config import DataConfig
from jz3_jax.decoding.config import EngineConfig
from jz3_jax.influence.config import SelectConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.config import MeshConfig
from jz3_jax.train.config import CompileConfig, LoraConfig, OptimizerConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Everything the trainer reads. `sft` and `pretrain` get it from the run's config; select's
    warm-up builds its own from the `select` section (no copy of the root config)."""

    seed: int
    model: ModelConfig
    mesh: MeshConfig
    data: DataConfig
    train: TrainConfig
    optimizer: OptimizerConfig
    lora: LoraConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ()  # data.train_path and model.checkpoint name the inputs
    PRODUCES: ClassVar[tuple[str, ...]] = ()  # filled per stage below


@dataclasses.dataclass(frozen=True)
class SftSpec(TrainSpec):
    PRODUCES: ClassVar[tuple[str, ...]] = ("sft.hf",)


@dataclasses.dataclass(frozen=True)
class PretrainSpec(TrainSpec):
    PRODUCES: ClassVar[tuple[str, ...]] = ("pretrain.hf",)


@dataclasses.dataclass(frozen=True)
class CompileSpec(TrainSpec):
    compile: CompileConfig
    engine: EngineConfig
    select: SelectConfig  # compile.program=select: the logra taps
