"""What the engine takes and gives: requests, per-token log-probabilities, progress events and
finished generations (plain dataclasses, no JAX)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from jz3_jax.decoding.sampling import SamplingParams


class RequestError(ValueError):
    """A request the engine cannot run (empty prompt, too long for the cache, bad settings)."""


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
