"""The `serve` stage: an OpenAI-compatible HTTP API (chat, completions, models) over the decoding engine."""

from jz3_jax.serve.server import OpenAIServer, build_server, default_model_name, run

__all__ = ["OpenAIServer", "build_server", "default_model_name", "run"]
