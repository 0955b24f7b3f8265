"""Multi-process start-up: `jax.distributed.initialize` when the config or environment asks for it.

Precedence: `distributed.*` config keys, then JZ3_COORDINATOR_ADDRESS / JZ3_NUM_PROCESSES /
JZ3_PROCESS_ID, then Cloud TPU pod auto-detection (a multi-host TPU VM sets TPU_WORKER_HOSTNAMES).
"""

from __future__ import annotations

import os

import jax

from jz3_jax.errors import ConfigError
from jz3_jax.runtime.config import DistributedConfig

_initialized = False


def _tpu_pod_env() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    try:
        return int(text) if text else default
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {text!r}") from None


def resolve(cfg: DistributedConfig) -> dict | None:
    """Keyword arguments for `jax.distributed.initialize`, or None for a single-process run."""
    address = cfg.coordinator_address or os.environ.get("JZ3_COORDINATOR_ADDRESS", "")
    num = cfg.num_processes or _env_int("JZ3_NUM_PROCESSES", 0)
    pid = cfg.process_id if cfg.process_id >= 0 else _env_int("JZ3_PROCESS_ID", -1)
    if cfg.enabled not in ("auto", "true", "false"):
        raise ConfigError(f"distributed.enabled must be auto, true or false, got {cfg.enabled!r}")
    if cfg.enabled == "false":
        return None
    if address or num > 1:
        if not address or num < 1 or pid < 0:
            raise ConfigError(
                "a multi-process run needs coordinator address, process count and process id "
                f"(got address={address!r}, num_processes={num}, process_id={pid})"
            )
        return {"coordinator_address": address, "num_processes": num, "process_id": pid}
    if cfg.enabled == "true" or _tpu_pod_env():
        return {}  # Cloud TPU: JAX reads everything from the environment
    return None


def maybe_initialize(cfg: DistributedConfig) -> bool:
    """Initialise `jax.distributed` once if this is a multi-process job; return whether it is."""
    global _initialized
    kwargs = resolve(cfg)
    if kwargs is None:
        return False
    if cfg.heartbeat_timeout_s < 1:
        raise ConfigError(f"distributed.heartbeat_timeout_s must be at least 1, got {cfg.heartbeat_timeout_s}")
    if not _initialized:
        jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=cfg.heartbeat_timeout_s)
        _initialized = True
    return True
