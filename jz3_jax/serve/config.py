"""The `serve` stage's config section (`cfg.serve`): a plain dataclass (a leaf module)."""

from __future__ import annotations

import dataclasses


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
