"""Decoding: the continuous-batching engine, per-request sampling and a greedy helper."""

from typing import TYPE_CHECKING

from jz3_jax.lazy import lazy_exports

# Public name -> the module that defines it (imported lazily, see `__getattr__`).
_EXPORTS = {
    **{name: "jz3_jax.decoding.engine" for name in ("Engine", "Event", "Generation", "Request", "RequestError")},
    "greedy_generate": "jz3_jax.decoding.greedy",
    "SamplingParams": "jz3_jax.decoding.sampling",
}

if TYPE_CHECKING:
    from jz3_jax.decoding.engine import Engine, Event, Generation, Request, RequestError
    from jz3_jax.decoding.greedy import greedy_generate
    from jz3_jax.decoding.sampling import SamplingParams

__all__ = ["Engine", "Event", "Generation", "Request", "RequestError", "SamplingParams", "greedy_generate"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
