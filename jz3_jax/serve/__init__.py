"""The `serve` stage: an OpenAI-compatible HTTP API (chat, completions, models) over the decoding engine."""

from typing import TYPE_CHECKING

from jz3_jax.lazy import lazy_exports

# Public name -> the module that defines it (imported lazily, see `__getattr__`).
_EXPORTS = {name: "jz3_jax.serve.server" for name in ("OpenAIServer", "build_server", "default_model_name", "run")}

if TYPE_CHECKING:
    from jz3_jax.serve.server import OpenAIServer, build_server, default_model_name, run

__all__ = ["OpenAIServer", "build_server", "default_model_name", "run"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
