"""The config schema: every stage family's section dataclass, nested under `Config`.

Every stage reads the same `Config`; a stage's own keys live in its section. Each section is
defined next to the code that reads it, in a leaf module of plain dataclasses (`runtime/config.py`,
`train/config.py`, `data/config.py`, `decoding/config.py`, `serve/config.py`, `synth/config.py`,
`checkpoint/config.py`, `bench/config.py`, `model/config.py`); this module only composes them, so
imports flow one way: the config layer imports the sections, never a stage's code. Later stages
add a section in their own package and a field here (never a second config mechanism).
"""

from __future__ import annotations

import dataclasses

from jz3_jax.bench.config import BenchConfig
from jz3_jax.checkpoint.config import ConvertConfig
from jz3_jax.corpus.config import CorpusConfig
from jz3_jax.data.config import DataConfig
from jz3_jax.decoding.config import EngineConfig, SamplingConfig
from jz3_jax.distill.config import DistillConfig, TeacherConfig
from jz3_jax.eval.config import EvalConfig, GradeConfig
from jz3_jax.influence.config import SelectConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.pipeline.config import PipelineConfig
from jz3_jax.runtime.config import DEFAULT_RULES, DistributedConfig, MeshConfig
from jz3_jax.serve.config import ServeConfig
from jz3_jax.synth.config import FilterConfig, SynthesizeConfig
from jz3_jax.train.config import CompileConfig, LoraConfig, OptimizerConfig, TrainConfig

__all__ = [
    "DEFAULT_RULES",
    "BenchConfig",
    "CompileConfig",
    "Config",
    "ConvertConfig",
    "CorpusConfig",
    "DataConfig",
    "DistillConfig",
    "DistributedConfig",
    "EngineConfig",
    "EvalConfig",
    "FilterConfig",
    "GradeConfig",
    "LoraConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PipelineConfig",
    "SamplingConfig",
    "SelectConfig",
    "ServeConfig",
    "SynthesizeConfig",
    "TeacherConfig",
    "TrainConfig",
]


@dataclasses.dataclass
class Config:
    """The root config of every stage."""

    seed: int = 0
    run_dir: str = "runs/default"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    compile: CompileConfig = dataclasses.field(default_factory=CompileConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
    synthesize: SynthesizeConfig = dataclasses.field(default_factory=SynthesizeConfig)
    convert: ConvertConfig = dataclasses.field(default_factory=ConvertConfig)
    filter: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    grade: GradeConfig = dataclasses.field(default_factory=GradeConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
