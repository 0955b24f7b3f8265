"""Decoding: the continuous-batching engine, per-request sampling and a greedy helper."""

from typing import TYPE_CHECKING

from jz3_jax.lazy import lazy_exports

# Public name -> the module that defines it (imported lazily, see `__getattr__`).
_EXPORTS = {
    "Engine": "jz3_jax.decoding.engine",
    **{name: "jz3_jax.decoding.requests" for name in ("Event", "Generation", "Request", "RequestError", "TokenLogprob")},
    "greedy_generate": "jz3_jax.decoding.greedy",
    "SamplingParams": "jz3_jax.decoding.sampling",
}

if TYPE_CHECKING:
    from jz3_jax.decoding.engine import Engine
    from jz3_jax.decoding.requests import Event, Generation, Request, RequestError, TokenLogprob
    from jz3_jax.decoding.greedy import greedy_generate
    from jz3_jax.decoding.sampling import SamplingParams

__all__ = ["Engine", "Event", "Generation", "Request", "RequestError", "SamplingParams", "TokenLogprob", "greedy_generate"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
