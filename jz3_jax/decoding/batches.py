"""Host-built device inputs: new requests' tokens and sampling settings as fixed-shape prefill
batches (the contiguous engine's `steps.PrefillBatch`, the paged engine's
`paged_steps.PagedPrefillBatch`), and a prompt to score."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jz3_jax.decoding import paged_steps, steps
from jz3_jax.decoding.sampling import seed_words


@dataclasses.dataclass
class RowPrefill:
    """One row to prefill: the request (`live`: a request and its seed), the tokens whose keys and
    values the row needs and how many of them are cached already (paged engine)."""

    row: int
    live: object  # engine._Live: .request, .seed, .tokens
    tokens: Sequence[int]
    start: int = 0


def _settings(rows: int, group: Sequence[RowPrefill], slots: int, vocab_size: int) -> dict[str, np.ndarray]:
    columns = {name: np.zeros((rows,), dtype) for name, dtype in
               [("slot", np.int32), ("max_new", np.int32), ("temperature", np.float32),
                ("top_k", np.int32), ("top_p", np.float32), ("seed_lo", np.uint32), ("seed_hi", np.uint32)]}
    columns["slot"][:] = slots  # padding rows: dropped by the scatter
    columns["top_p"][:] = 1.0
    for i, item in enumerate(group):
        params = item.live.request.params
        lo, hi = seed_words(item.live.seed)
        top_k = params.top_k if params.top_k < vocab_size else 0  # the whole vocabulary: no filter
        for name, value in [("slot", item.row), ("max_new", params.max_new_tokens),
                            ("temperature", params.temperature), ("top_k", top_k), ("top_p", params.top_p),
                            ("seed_lo", lo), ("seed_hi", hi)]:
            columns[name][i] = value
    return columns


def prefill_batch(rows: int, width: int, group: Sequence[RowPrefill], pad_id: int, slots: int,
                  vocab_size: int) -> steps.PrefillBatch:
    """`group`'s prompts and settings as a batch of `rows` x `width` (the rest padding)."""
    tokens = np.full((rows, width), pad_id, np.int32)
    length = np.ones((rows,), np.int32)
    for i, item in enumerate(group):
        tokens[i, : len(item.tokens)] = item.tokens
        length[i] = len(item.tokens)
    columns = _settings(rows, group, slots, vocab_size)
    return steps.PrefillBatch(tokens=jnp.asarray(tokens), length=jnp.asarray(length),
                              **{k: jnp.asarray(v) for k, v in columns.items()})


def paged_prefill_batch(rows: int, width: int, group: Sequence[RowPrefill], table: np.ndarray, pad_id: int,
                        slots: int, vocab_size: int) -> paged_steps.PagedPrefillBatch:
    """`group`'s uncached suffixes and settings as a batch of `rows` x `width` over `table`'s
    page-table columns [slots(+), context pages] (rows past the group: padding on the scratch page)."""
    tokens = np.full((rows, width), pad_id, np.int32)
    extra = {name: np.zeros((rows,), dtype) for name, dtype in
             [("start", np.int32), ("length", np.int32), ("resume", bool), ("token", np.int32),
              ("generated", np.int32)]}
    extra["length"][:] = 1
    page_table = np.zeros((rows, table.shape[1]), np.int32)
    for i, item in enumerate(group):
        suffix = item.tokens[item.start:]
        tokens[i, : len(suffix)] = suffix
        extra["start"][i], extra["length"][i] = item.start, len(suffix)
        page_table[i] = table[item.row]
        generated = item.live.tokens
        if generated:  # resumed after preemption: the last sampled token is pending, not cached
            extra["resume"][i], extra["token"][i], extra["generated"][i] = True, generated[-1], len(generated)
    columns = {**_settings(rows, group, slots, vocab_size), **extra}
    return paged_steps.PagedPrefillBatch(tokens=jnp.asarray(tokens), page_table=jnp.asarray(page_table),
                                         **{k: jnp.asarray(v) for k, v in columns.items()})


def score_inputs(prompt_ids: Sequence[int], width: int, temperature: float, pad_id: int):
    """`steps.score_prompt`'s (tokens [1, width], length [1], temperature [1]) for one prompt."""
    tokens = np.full((1, width), pad_id, np.int32)
    tokens[0, : len(prompt_ids)] = prompt_ids
    return jnp.asarray(tokens), jnp.asarray([len(prompt_ids)], np.int32), jnp.asarray([temperature], np.float32)
