"""Log-probabilities from the device's arrays to `TokenLogprob`s (host side; fetched only when a
request asked, see `sampling.token_logprobs`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jz3_jax.decoding import steps
from jz3_jax.decoding.batches import score_inputs
from jz3_jax.decoding.requests import TokenLogprob


def fetch_logprobs(extra: tuple) -> tuple[np.ndarray, ...] | None:
    """The (chosen, top ids, top log-probabilities) arrays of a dispatch on the host, or None when
    the dispatch returned none (`extra`: what follows the state and tokens in its result: () or
    one (chosen, ids, log-probabilities) tuple)."""
    return tuple(np.asarray(x) for x in extra[0]) if extra else None


def row_logprobs(n: int | None, extra, row: int, count: int) -> list[TokenLogprob] | None:
    """The first `count` tokens' log-probabilities of `row` (extra: [slots, steps(, N)] arrays,
    or [slots(, N)] for the first token), trimmed to the request's `n` (None: not asked)."""
    if n is None or extra is None:
        return None
    chosen, ids, lps = (x[row] for x in extra)
    if chosen.ndim == 0:
        chosen, ids, lps = chosen[None], ids[None], lps[None]
    return [TokenLogprob(-1, float(chosen[j]), [(int(t), float(v)) for t, v in zip(ids[j, :n], lps[j, :n])])
            for j in range(count)]


def scored_tokens(prompt_ids: Sequence[int], chosen: np.ndarray, ids: np.ndarray, lps: np.ndarray,
                  top_n: int) -> list[TokenLogprob]:
    """Every prompt token after the first with its log-probability and the `top_n` alternatives."""
    return [TokenLogprob(int(prompt_ids[i + 1]), float(chosen[i]),
                         [(int(t), float(v)) for t, v in zip(ids[i, :top_n], lps[i, :top_n])])
            for i in range(len(prompt_ids) - 1)]


def score_prompt(graphdef, params, prompt_ids: Sequence[int], width: int, temperature: float, pad_id: int,
                 max_logprobs: int, top_n: int) -> list[TokenLogprob]:
    """Every prompt token's log-probability after the first and its `top_n` alternatives
    (`Engine.score`): one forward pass of the prompt padded to `width`, compiled for `max_logprobs`."""
    if len(prompt_ids) == 1:
        return []
    chosen, ids, lps = steps.score_prompt(graphdef, params, *score_inputs(prompt_ids, width, temperature, pad_id),
                                          max_logprobs)
    return scored_tokens(prompt_ids, np.asarray(chosen)[0], np.asarray(ids)[0], np.asarray(lps)[0], top_n)
