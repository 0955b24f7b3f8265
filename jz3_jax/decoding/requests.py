"""What the engine takes and gives: requests, per-token log-probabilities, progress events and
finished generations (plain dataclasses, no JAX)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from jz3_jax.decoding.sampling import SamplingParams


class RequestError(ValueError):
    """A request the engine cannot run (empty prompt, too long for the cache, bad settings)."""


def check_logprobs(n: int | None, limit: int) -> None:
    """Raise RequestError unless an engine returning at most `limit` top log-probabilities (0: none)
    can return `n` (None: none asked)."""
    if n is not None and (not limit or n > limit):
        raise RequestError(f"{n} top log-probabilities exceed this engine's limit of {limit} (engine.max_logprobs)"
                           if limit else "log-probabilities are off on this engine (engine.max_logprobs=0)")


def check_top_k(top_k: int, limit: int, vocab_size: int) -> None:
    """Raise RequestError if `top_k` is above an engine's `limit` (a top_k of at least the vocabulary is no filter)."""
    if limit < top_k < vocab_size:
        raise RequestError(f"top_k={top_k} exceeds this engine's limit of {limit} (engine.max_top_k); "
                           f"use top_k <= {limit}, or 0 for no top-k filter")


@dataclasses.dataclass
class Request:
    """One prompt to continue. `on_event`, if set, is called (from the engine's thread) with
    every `Event` of this request as it happens."""

    prompt_ids: Sequence[int]
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    id: Any = None
    on_event: Callable[["Event"], None] | None = None


@dataclasses.dataclass
class TokenLogprob:
    """One token's log-probability (`sampling.token_logprobs`: after temperature) and the request's
    top-N alternatives (id, log-probability), most likely first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclasses.dataclass
class Generation:
    """A finished request: the new tokens (up to and including EOS or the stop-completing token),
    their text (cut before a stop string; None without a tokenizer) and why it ended: "stop"
    (EOS or a stop string) or "length" (max_new_tokens)."""

    id: Any
    prompt_ids: list[int]
    token_ids: list[int]
    text: str | None
    finish_reason: str
    seed: int
    logprobs: list[TokenLogprob] | None = None  # one per token of token_ids when the request asked


@dataclasses.dataclass
class Event:
    """Progress of one request: newly sampled tokens, the new text, and the result once finished."""

    request: Request
    new_token_ids: list[int]
    text_delta: str
    finished: Generation | None = None
    logprobs: list[TokenLogprob] | None = None  # one per new token when the request asked
