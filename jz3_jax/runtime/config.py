"""The runtime's config sections (`cfg.mesh`, `cfg.distributed`, and `cfg.engine.mesh`): plain dataclasses.

A leaf module: no JAX, no other project imports, so the config layer composes it cheaply.
"""

from __future__ import annotations

import dataclasses

# Logical axis name -> mesh axes ("+"-joined; empty = replicated). Order matters only for display.
# `expert` (mesh.expert > 1) splits the experts of a mixture of experts over chips; the batch and
# the other weights are split over it too, so those chips still see distinct tokens and hold
# distinct shards (an expert weight's embed dimension gets fsdp only: the expert axis is taken).
DEFAULT_RULES = [
    "batch=data+fsdp+expert",
    "length=",
    "embed=fsdp+expert",
    "mlp=tensor",
    "heads=tensor",
    "kv_heads=tensor",
    "head_dim=",
    "norm=",
    "vocab=tensor",
    "layers=",
    "experts=expert",
]


@dataclasses.dataclass
class MeshConfig:
    """Device mesh sizes (one of data/fsdp/tensor may be -1: the remaining devices) and the
    logical-axis rules. `expert` > 1 adds an `expert` mesh axis (expert parallelism)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    expert: int = 1
    rules: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_RULES))


@dataclasses.dataclass
class DistributedConfig:
    """Multi-process setup. Empty/zero values fall back to JZ3_* env vars, then to Cloud TPU auto-detection."""

    enabled: str = "auto"  # auto | true | false
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    # A process that stops heartbeating (killed, host lost) stops the others after this long.
    heartbeat_timeout_s: int = 30
