"""Decoding: the continuous-batching engine, per-request sampling and a greedy helper."""

from jz3_jax.decoding.engine import Engine, Event, Generation, Request, RequestError
from jz3_jax.decoding.greedy import greedy_generate
from jz3_jax.decoding.sampling import SamplingParams

__all__ = ["Engine", "Event", "Generation", "Request", "RequestError", "SamplingParams", "greedy_generate"]
