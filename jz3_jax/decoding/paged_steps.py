"""The paged engine's device functions: its decode state and the prefill over pages.

A paged `DecodeState` (see `steps.py`) holds a `PagedKVCache` (`jz3_jax.model.paged_attention`):
page pools shared by every row, and per row a page table and a length. `steps.sample_first` and
`steps.decode` run on it unchanged (`decode` takes the page table the host prepared for the
dispatch); `decode_rows` runs it over a subset of the rows (the running ones, padded to a row
bucket): the rows are gathered and scattered back, the pool is shared, so moving a row costs its
few scalars, not its cache. `prefill` here runs each new row's uncached suffix: the row's page
table already names the cached prefix pages and fresh pages for the rest, the suffix's
keys/values are written into them, and its attention reads the prefix and itself through the
table (`paged_prefill_attention`).

A row resumed after preemption is prefilled with its prompt and every generated token but the last
one, which becomes its pending token: its sampler continues at the same count, so the rest of its
output is what an uninterrupted run gives.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jz3_jax.decoding import steps as device
from jz3_jax.decoding.sampling import row_keys
from jz3_jax.decoding.steps import DecodeState, constrain_state, empty_state
from jz3_jax.model.paged_attention import PagedKVCache


class PagedPrefillBatch(NamedTuple):
    """New rows' uncached suffixes [n, width] (right-padded) and settings [n].

    `page_table` [n, context pages] covers every token of the row up to the end of its suffix;
    rows of `slot` equal to the number of slots are padding (scratch pages, writes dropped)."""

    slot: jax.Array
    tokens: jax.Array
    start: jax.Array  # cached prefix tokens (the suffix's first position)
    length: jax.Array  # real suffix tokens
    page_table: jax.Array
    max_new: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    seed_lo: jax.Array
    seed_hi: jax.Array
    resume: jax.Array  # bool: a preempted row coming back (active at once, no first-token sampling)
    token: jax.Array  # a resumed row's pending token
    generated: jax.Array  # a resumed row's tokens sampled so far (0 for a new row)


@functools.partial(jax.jit, static_argnames=("graphdef", "slots", "num_pages", "page_size", "pages_per_row"))
def init_state(graphdef, params, slots: int, num_pages: int, page_size: int, pages_per_row: int) -> DecodeState:
    """An all-free paged decode state: `slots` rows over a pool of `num_pages` pages."""
    model = nnx.merge(graphdef, params)
    cache = model.init_paged_cache(num_pages, page_size, slots, pages_per_row)
    return empty_state(cache, slots, model.cfg.vocab_size, model.rules)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("state",))
def prefill(graphdef, params, state: DecodeState, batch: PagedPrefillBatch) -> DecodeState:
    """Run new rows' suffixes over their pages, keep each one's last-token logits for
    `sample_first`; resumed rows become active with their pending token."""
    model = nnx.merge(graphdef, params)
    n, width = batch.tokens.shape
    offsets = jnp.arange(width, dtype=jnp.int32)[None, :]
    positions = batch.start[:, None] + offsets
    segments = (offsets < batch.length[:, None]).astype(jnp.int32)
    cache = PagedKVCache(state.cache.k, state.cache.v, batch.page_table, batch.start)
    hidden, cache = model.hidden_states(batch.tokens, positions, segments, cache)
    last = model.logits(hidden[jnp.arange(n), batch.length - 1][:, None])[:, 0]

    def put(values, new):
        return values.at[batch.slot].set(new.astype(values.dtype), mode="drop")

    total = batch.start + batch.length
    state = DecodeState(
        cache=state.cache._replace(k=cache.k, v=cache.v, lengths=put(state.cache.lengths, total)),
        token=put(state.token, batch.token),
        position=put(state.position, total),
        active=put(state.active, batch.resume),
        generated=put(state.generated, batch.generated),
        max_new=put(state.max_new, batch.max_new),
        temperature=put(state.temperature, batch.temperature),
        top_k=put(state.top_k, batch.top_k),
        top_p=put(state.top_p, batch.top_p),
        key=put(state.key, row_keys(batch.seed_lo, batch.seed_hi)),
        prompt_logits=put(state.prompt_logits, last),
    )
    return constrain_state(state, model.rules)


ROW_FIELDS = tuple(f for f in DecodeState._fields if f not in ("cache", "prompt_logits"))  # what a decode step reads


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "eos_ids", "max_top_k", "logprobs"),
                   donate_argnames=("state",))
def decode_rows(graphdef, params, state: DecodeState, rows: jax.Array, page_table: jax.Array, keep: jax.Array,
                steps: int, eos_ids: tuple[int, ...], max_top_k: int = 64, logprobs: int = 0):
    """`steps.decode` over the slots `rows` [n] only (distinct; `keep` [n] and `page_table` [n,
    pages_per_row] are theirs): a step computes n rows, not every slot. Returns what
    `steps.decode` returns, its per-row outputs in the order of `rows`."""
    model = nnx.merge(graphdef, params)
    n = rows.shape[0]
    sub = DecodeState(cache=state.cache._replace(lengths=state.cache.lengths[rows]),
                      prompt_logits=jnp.zeros((n, 0), state.prompt_logits.dtype),  # decode never reads it
                      **{f: getattr(state, f)[rows] for f in ROW_FIELDS})
    sub, *out = device.decode(graphdef, params, sub, keep, steps, eos_ids, max_top_k, logprobs, page_table)
    state = state._replace(cache=state.cache._replace(k=sub.cache.k, v=sub.cache.v,
                                                      lengths=state.cache.lengths.at[rows].set(sub.cache.lengths)),
                           **{f: getattr(state, f).at[rows].set(getattr(sub, f)) for f in ROW_FIELDS})
    return constrain_state(state, model.rules), *out
