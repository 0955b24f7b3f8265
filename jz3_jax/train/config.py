"""The training stages' config sections (`cfg.optimizer`, `cfg.train`, `cfg.lora`, `cfg.compile`).

A leaf module of plain dataclasses: the config layer composes it without importing training code.
"""

from __future__ import annotations

import dataclasses


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
    log_every: int = 10  # metrics leave the device only every log_every steps (each step still gets its line)
    sync_every: int = 10  # processes agree on SIGTERM every sync_every steps (one small collective)
    export_hf: bool = True
    peak_tflops: float = 0.0  # peak TFLOP/s per device for MFU where the chip is not in the table (CPU); 0 = table
    loss_chunk: int = 0  # > 0: LM head + loss over this many positions at a time (never the full logits); 0 = dense


@dataclasses.dataclass
class LoraConfig:
    """LoRA adapters (rank 0 = off): only the adapters train; export merges them into the base."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])


@dataclasses.dataclass
class CompileConfig:
    """`compile` stage: ahead-of-time compile of the train step (or the decode step) for a Cloud TPU
    topology (e.g. v5p-64)."""

    topology: str = "v5p-16"
    per_device_batch: int = 1
    num_slices: int = 1
    program: str = "train"  # train | decode (the engine's decode step: engine.max_batch x engine.max_seq_len)
    # | select (select's logra feature step: per_device_batch x data.max_length, `select.*` taps)
    find_max_batch: bool = False  # also search (by compiling) the largest per_device_batch that fits
    max_batch_limit: int = 512  # the search's upper bound (rows per device)
    step_time_s: float = 0.0  # > 0: report the model-FLOPs utilisation this step time would mean
    # program=decode: tokens (prompt + generated) per request, to size the cache paged vs contiguous
    max_tokens: int = 0  # the longest request; 0 = engine.max_seq_len
    mean_tokens: int = 0  # the mean request; > 0 also sizes the cache to HBM, paged vs contiguous
