"""The config schema: one dataclass per section, nested under `Config`.

Every stage reads the same `Config`; a stage's own keys live in its section. Later stages add
sections here (never a second config mechanism).
"""

from __future__ import annotations

import dataclasses

from jz3_jax.model.config import ModelConfig

# Logical axis name -> mesh axes ("+"-joined; empty = replicated). Order matters only for display.
DEFAULT_RULES = [
    "batch=data+fsdp",
    "length=",
    "embed=fsdp",
    "mlp=tensor",
    "heads=tensor",
    "kv_heads=tensor",
    "head_dim=",
    "norm=",
    "vocab=tensor",
    "layers=",
]


@dataclasses.dataclass
class MeshConfig:
    """Device mesh sizes (one of them may be -1: the remaining devices) and the logical-axis rules."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    rules: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_RULES))


@dataclasses.dataclass
class DistributedConfig:
    """Multi-process setup. Empty/zero values fall back to JZ3_* env vars, then to Cloud TPU auto-detection."""

    enabled: str = "auto"  # auto | true | false
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1


@dataclasses.dataclass
class OptimizerConfig:
    """AdamW with a learning-rate schedule."""

    lr: float = 1e-5
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    schedule: str = "cosine"  # constant | linear | cosine | wsd
    warmup_fraction: float = 0.03
    stable_fraction: float = 0.85
    min_lr_fraction: float = 0.1
    grad_clip: float = 1.0


@dataclasses.dataclass
class DataConfig:
    """Training/eval records (`input`/`output` fields)."""

    train_path: str = ""
    eval_path: str = ""
    max_length: int = 2048


@dataclasses.dataclass
class TrainConfig:
    """Trainer loop settings shared by `sft` and `pretrain`."""

    global_batch_size: int = 32
    steps: int = 0
    epochs: float = 1.0
    eval_every: int = 0
    checkpoint_every: int = 1000
    log_every: int = 1


@dataclasses.dataclass
class SamplingConfig:
    """Decoding settings used by synthesize/eval/serve."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int = 0


@dataclasses.dataclass
class ConvertConfig:
    """`convert` stage: src is a HF dir, an orbax checkpoint dir or a .gguf file."""

    src: str = ""
    dst: str = ""
    dst_format: str = "orbax"  # orbax | hf


@dataclasses.dataclass
class BenchConfig:
    """`bench` stage: which kind, its shapes, and how many timed repeats."""

    kind: str = "forward"  # forward | train | decode | influence
    batch: int = 8
    seq_len: int = 256
    new_tokens: int = 128
    warmup: int = 2
    repeats: int = 5
    reference: bool = True  # also time the transformers/PyTorch reference where one exists


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
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    convert: ConvertConfig = dataclasses.field(default_factory=ConvertConfig)
    bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)
