"""The config schema: one dataclass per section, nested under `Config`.

Every stage reads the same `Config`; a stage's own keys live in its section. Later stages add
sections here (never a second config mechanism).
"""

from __future__ import annotations

import dataclasses

from jz3_jax.model.config import ModelConfig
from jz3_jax.synth.filter_config import FilterConfig

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
    """Training/eval records with `input` (prompt, masked from the loss) and `output` (target) fields.

    `train_path`/`eval_path`: a .jsonl/.parquet/.array_record file, a directory or glob of them, or
    a TFDS array_record builder directory (format "tfds", split from `train_split`/`eval_split`).
    Without `eval_path`, `eval_rows` records are held out from the training data.
    """

    train_path: str = ""
    eval_path: str = ""
    format: str = "auto"  # auto | jsonl | parquet | array_record | tfds
    train_split: str = "train"
    eval_split: str = "test"
    eval_rows: int = 0
    input_field: str = "input"
    output_field: str = "output"
    max_length: int = 2048
    pack: bool = True
    train_on_input: bool = False
    bad_records: str = "error"  # error | skip
    shuffle: bool = True
    num_workers: int = 0


@dataclasses.dataclass
class TrainConfig:
    """Trainer loop settings shared by `sft` and `pretrain`."""

    global_batch_size: int = 32  # rows per optimizer step (all processes, all accumulation micro-steps)
    grad_accum: int = 1
    steps: int = 0  # 0 = derived from epochs and the dataset size
    epochs: float = 1.0
    eval_every: int = 0
    eval_batches: int = 4
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 1
    export_hf: bool = True
    peak_tflops: float = 0.0  # peak TFLOP/s per device for MFU where the chip is not in the table (CPU); 0 = table


@dataclasses.dataclass
class LoraConfig:
    """LoRA adapters (rank 0 = off): only the adapters train; export merges them into the base."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])


@dataclasses.dataclass
class CompileConfig:
    """`compile` stage: ahead-of-time compile of the train step for a Cloud TPU topology (e.g. v5p-64)."""

    topology: str = "v5p-16"
    per_device_batch: int = 1
    num_slices: int = 1


@dataclasses.dataclass
class SamplingConfig:
    """Decoding settings used by synthesize/eval/serve."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int = 0


@dataclasses.dataclass
class EngineConfig:
    """The decoding engine shared by synthesize/serve/eval: rows decoded together and cache length.

    `max_seq_len` bounds prompt + new tokens per request; `steps_per_dispatch` tokens are decoded on
    device per host round trip; prompt lengths are padded up to a multiple of `prompt_bucket`.
    """

    max_batch: int = 16
    max_seq_len: int = 2048
    steps_per_dispatch: int = 8
    prompt_bucket: int = 64


@dataclasses.dataclass
class ServeConfig:
    """`serve` stage: an OpenAI-compatible HTTP server over the engine.

    `model_name` is the id clients send as `model` (default: the checkpoint's file or directory
    name); more than `max_queue` waiting requests get HTTP 429.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = ""
    max_queue: int = 256
    request_timeout_s: float = 600.0


@dataclasses.dataclass
class SynthesizeConfig:
    """`synthesize` stage: prompts jsonl (`id`, `prompt`) in, completion shards out.

    With `chat_template` the prompt is sent as one user message through the tokenizer's chat
    template; `shard_size` completions are written per shard file (atomically).
    """

    prompts: str = ""
    chat_template: bool = True
    shard_size: int = 256


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
    new_tokens: int = 128  # decode: tokens generated per request
    prompt_len: int = 32  # decode: prompt tokens per request
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
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    compile: CompileConfig = dataclasses.field(default_factory=CompileConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
    synthesize: SynthesizeConfig = dataclasses.field(default_factory=SynthesizeConfig)
    convert: ConvertConfig = dataclasses.field(default_factory=ConvertConfig)
    filter: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)
