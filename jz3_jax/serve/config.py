"""The `serve` stage's config section (`cfg.serve`): a plain dataclass (a leaf module)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ServeConfig:
    """`serve` stage: an OpenAI-compatible HTTP server over the engine.

    `model_name` is the id clients send as `model` (default: the checkpoint's file or directory
    name); more than `max_queue` waiting requests get HTTP 429. `api_key_env` names an environment
    variable holding the API key every `/v1/*` request must send as `Authorization: Bearer KEY`
    (empty: no auth). Request bodies over `max_body_bytes` get 413. On SIGTERM the server answers
    new requests with 503 and gives in-flight ones up to `drain_timeout_s` to finish.

    Connections: the request line and headers must arrive within `header_timeout_s` of the
    connection opening (or of the previous response), the body within `body_timeout_s` of the
    headers (408 otherwise), and a connection with no request under way is closed after
    `keep_alive_timeout_s`; more than `max_connections` open connections get 503 and are closed.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = ""
    max_queue: int = 256
    request_timeout_s: float = 600.0
    api_key_env: str = ""
    max_body_bytes: int = 8 << 20
    drain_timeout_s: float = 30.0
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 15.0
    max_connections: int = 1024
