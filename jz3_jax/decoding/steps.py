"""The engine's device side: a fixed-shape decode state and the two jitted functions on it.

`DecodeState` holds `slots` rows, each either free or decoding one request: a preallocated KV
cache of `length` positions per row, the row's last token and position, and its sampling
settings. `prefill` runs a bucketed batch of new prompts, writes them into chosen rows and keeps
each prompt's last-token logits in the state; `sample_first` then samples the first new token of
every row just prefilled (one program for all prefill buckets: the sampler is the costly part of
a small program to compile, so it stays out of the many prefill programs); `decode` advances
every active row by up to `steps` tokens in one dispatch (a `while_loop` on device that stops
early once no row is active). Shapes never depend on the requests, so each (prompt bucket,
insert count) pair compiles once.

The samplers take a static `max_top_k` (the largest top-k a row may ask for: candidates come from
`jax.lax.top_k`, see `sampling.filter_top_k_top_p`); `decode` attends with the layout its model
carries (`Decoder.decode_attention`, see `attention.py`).

Log-probabilities: `sample_first` and `decode` take a static `logprobs` N; 0 (the default) is the
plain program, N > 0 a separately compiled variant that also returns each sampled token's
log-probability and the top N (`sampling.token_logprobs`), so plain decoding computes and fetches
nothing extra. `score_prompt` (no cache, no state) gives every prompt token's log-probability.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jz3_jax.decoding.sampling import row_keys, sample_tokens, token_logprobs
from jz3_jax.model.attention import KVCache
from jz3_jax.model.paged_attention import PagedKVCache
from jz3_jax.model.params import constrain

CACHE_AXES = ("batch", "length", "kv_heads", "head_dim")
POOL_AXES = ("kv_heads", None, None, "head_dim")  # [kv_heads, pages, page_size, head_dim]
ROW_AXES = ("batch",)


class DecodeState(NamedTuple):
    """Everything a decode step reads and writes, one entry per row (slot)."""

    cache: KVCache | PagedKVCache  # a paged state: see `paged_steps.py`
    token: jax.Array  # [slots] int32: the last sampled token, not yet in the cache
    position: jax.Array  # [slots] int32: that token's position
    active: jax.Array  # [slots] bool
    generated: jax.Array  # [slots] int32: tokens sampled so far
    max_new: jax.Array  # [slots] int32
    temperature: jax.Array  # [slots] float32
    top_k: jax.Array  # [slots] int32
    top_p: jax.Array  # [slots] float32
    key: jax.Array  # [slots, 2] uint32
    prompt_logits: jax.Array  # [slots, vocab] float32: a just-prefilled row's last prompt logits


class PrefillBatch(NamedTuple):
    """New requests for some rows: right-padded prompts [n, bucket] and per-request settings [n].

    Rows of `slot` equal to the number of slots are padding (their writes are dropped)."""

    slot: jax.Array
    tokens: jax.Array
    length: jax.Array
    max_new: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    seed_lo: jax.Array
    seed_hi: jax.Array


def constrain_state(state: DecodeState, rules: tuple) -> DecodeState:
    """Rows over the data axes, cache kv-heads over the tensor axis (as the rules table says)."""
    axes = POOL_AXES if isinstance(state.cache, PagedKVCache) else CACHE_AXES

    def cache_part(x):
        return constrain(x, axes if x.ndim == 4 else ("layers", *axes), rules)

    if isinstance(state.cache, PagedKVCache):
        cache = state.cache._replace(k=jax.tree.map(cache_part, state.cache.k),
                                     v=jax.tree.map(cache_part, state.cache.v),
                                     page_table=constrain(state.cache.page_table, ROW_AXES + (None,), rules),
                                     lengths=constrain(state.cache.lengths, ROW_AXES, rules))
    else:
        cache = state.cache._replace(k=jax.tree.map(cache_part, state.cache.k),
                                     v=jax.tree.map(cache_part, state.cache.v),
                                     # fixed too, so every program sees the shardings it was compiled (warmed up) for
                                     valid=constrain(state.cache.valid, ROW_AXES + (None,), rules),
                                     pos=constrain(state.cache.pos, ROW_AXES + (None,), rules),
                                     index=constrain(state.cache.index, ROW_AXES, rules))
    rows = {name: constrain(getattr(state, name), ROW_AXES + (None,) * (getattr(state, name).ndim - 1), rules)
            for name in DecodeState._fields if name != "cache"}
    return DecodeState(cache=cache, **rows)


@functools.partial(jax.jit, static_argnames=("graphdef", "slots", "length"))
def init_state(graphdef, params, slots: int, length: int) -> DecodeState:
    """An all-free decode state of `slots` rows with `length` cache positions each."""
    model = nnx.merge(graphdef, params)
    return empty_state(model.init_cache(slots, length), slots, model.cfg.vocab_size, model.rules)


def empty_state(cache, slots: int, vocab_size: int, rules: tuple) -> DecodeState:
    """A decode state of `slots` free rows over `cache` (contiguous or paged), under `rules`."""
    zeros_i = jnp.zeros((slots,), jnp.int32)
    state = DecodeState(
        cache=cache,
        token=zeros_i,
        position=zeros_i,
        active=jnp.zeros((slots,), bool),
        generated=zeros_i,
        max_new=zeros_i,
        temperature=jnp.zeros((slots,), jnp.float32),
        top_k=zeros_i,
        top_p=jnp.ones((slots,), jnp.float32),
        key=jnp.zeros((slots, 2), jnp.uint32),
        prompt_logits=jnp.zeros((slots, vocab_size), jnp.float32),
    )
    return constrain_state(state, rules)


def _is_eos(tokens: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))


def _scatter_rows(buffer: jax.Array, rows: jax.Array, new: jax.Array, row_axis: int) -> jax.Array:
    """`buffer` with `new` written at `rows` along `row_axis` (from slot 0 of the next axis);
    out-of-range rows are dropped."""
    width = new.shape[row_axis + 1]
    index = (slice(None),) * row_axis + (rows, slice(0, width))
    return buffer.at[index].set(new.astype(buffer.dtype), mode="drop")


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("state",))
def prefill(graphdef, params, state: DecodeState, batch: PrefillBatch) -> DecodeState:
    """Run new prompts, write their keys/values into rows `batch.slot` and keep each prompt's
    last-token logits for `sample_first` (the rows stay inactive until it samples)."""
    model = nnx.merge(graphdef, params)
    n, width = batch.tokens.shape
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), batch.tokens.shape)
    segments = (positions < batch.length[:, None]).astype(jnp.int32)
    fresh = model.init_cache(n, width)
    hidden, fresh = model.hidden_states(batch.tokens, positions, segments, fresh)
    # Vocabulary logits of each prompt's last token only: over every position they cost more than the prompt.
    last = model.logits(hidden[jnp.arange(n), batch.length - 1][:, None])[:, 0]

    layer_axis = 0 if isinstance(state.cache.k, tuple) else 1
    scatter = functools.partial(_scatter_rows, rows=batch.slot, row_axis=layer_axis)
    cache = state.cache
    cleared = jnp.zeros((n, cache.valid.shape[1]), jnp.int32)  # forget the row's previous request
    cache = KVCache(
        k=jax.tree.map(lambda buf, new: scatter(buf, new=new), cache.k, fresh.k),
        v=jax.tree.map(lambda buf, new: scatter(buf, new=new), cache.v, fresh.v),
        valid=_scatter_rows(_scatter_rows(cache.valid, batch.slot, cleared, 0), batch.slot, fresh.valid, 0),
        pos=_scatter_rows(cache.pos, batch.slot, fresh.pos, 0),
        index=cache.index.at[batch.slot].set(batch.length, mode="drop"),
    )

    def put(values, new):
        return values.at[batch.slot].set(new.astype(values.dtype), mode="drop")

    state = DecodeState(
        cache=cache,
        token=state.token,
        position=put(state.position, batch.length),
        active=put(state.active, jnp.zeros((n,), bool)),
        generated=put(state.generated, jnp.zeros((n,), jnp.int32)),
        max_new=put(state.max_new, batch.max_new),
        temperature=put(state.temperature, batch.temperature),
        top_k=put(state.top_k, batch.top_k),
        top_p=put(state.top_p, batch.top_p),
        key=put(state.key, row_keys(batch.seed_lo, batch.seed_hi)),
        prompt_logits=put(state.prompt_logits, last),
    )
    return constrain_state(state, model.rules)


@functools.partial(jax.jit, static_argnames=("rules", "eos_ids", "max_top_k", "logprobs"), donate_argnames=("state",))
def sample_first(state: DecodeState, fresh: jax.Array, eos_ids: tuple[int, ...], max_top_k: int = 64,
                 rules: tuple = (), logprobs: int = 0):
    """The first new token of every row where `fresh` [slots] is True (rows prefilled since the
    last call) from its prompt logits; those rows become active unless it ends them.

    Returns (state, first tokens [slots]; other rows' entries are meaningless), and with
    `logprobs` N > 0 also (their log-probabilities [slots], top ids [slots, N], top log-probs [slots, N])."""
    slots = state.token.shape[0]
    first = sample_tokens(state.prompt_logits, jnp.where(fresh, state.temperature, 0.0), state.top_k, state.top_p,
                          state.key, jnp.zeros((slots,), jnp.int32), max_top_k)
    still = ~_is_eos(first, eos_ids) & (state.max_new > 1)
    state = state._replace(
        token=jnp.where(fresh, first, state.token),
        active=jnp.where(fresh, still, state.active),
        generated=jnp.where(fresh, 1, state.generated),
    )
    if logprobs:
        return constrain_state(state, rules), first, token_logprobs(state.prompt_logits, state.temperature, first,
                                                                     logprobs)
    return constrain_state(state, rules), first


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "eos_ids", "max_top_k", "logprobs"),
                   donate_argnames=("state",))
def decode(graphdef, params, state: DecodeState, keep: jax.Array, steps: int, eos_ids: tuple[int, ...],
           max_top_k: int = 64, logprobs: int = 0, page_table: jax.Array | None = None):
    """Up to `steps` tokens for every active row (rows where `keep` is False are stopped first).
    The model's decode attention layout is the one `graphdef` carries (`Decoder.decode_attention`).
    A paged state takes `page_table` [slots, pages_per_row] (pages for every token this dispatch
    may write: the host allocates them before).

    Returns (state, tokens [slots, steps] with -1 where a row emitted nothing), and with `logprobs`
    N > 0 also (log-probabilities [slots, steps], top ids [slots, steps, N], top log-probs
    [slots, steps, N]) of those tokens."""
    model = nnx.merge(graphdef, params)
    slots = state.token.shape[0]
    state = state._replace(active=state.active & keep)
    if page_table is not None:
        state = state._replace(cache=state.cache._replace(page_table=page_table))

    def cond(carry):
        i, state, _ = carry
        return (i < steps) & jnp.any(state.active)

    def body(carry):
        i, state, out = carry
        if logprobs:
            out, extra = out
        live = state.active
        logits, cache = model(state.token[:, None], state.position[:, None], live[:, None].astype(jnp.int32),
                              state.cache)
        nxt = sample_tokens(logits[:, 0], state.temperature, state.top_k, state.top_p, state.key, state.generated,
                            max_top_k)
        generated = state.generated + live
        finished = _is_eos(nxt, eos_ids) | (generated >= state.max_new)
        state = state._replace(
            cache=cache,
            token=jnp.where(live, nxt, state.token),
            position=state.position + live,
            active=live & ~finished,
            generated=generated,
        )
        out = out.at[:, i].set(jnp.where(live, nxt, -1))
        if logprobs:
            new = token_logprobs(logits[:, 0], state.temperature, nxt, logprobs)
            out = (out, tuple(buf.at[:, i].set(value) for buf, value in zip(extra, new)))
        return i + 1, constrain_state(state, model.rules), out

    out = jnp.full((slots, steps), -1, jnp.int32)
    if logprobs:
        out = (out, (jnp.zeros((slots, steps), jnp.float32), jnp.zeros((slots, steps, logprobs), jnp.int32),
                     jnp.zeros((slots, steps, logprobs), jnp.float32)))
    _, state, out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out))
    if logprobs:
        return state, *out
    return state, out


@functools.partial(jax.jit, static_argnames=("graphdef", "top_n"))
def score_prompt(graphdef, params, tokens: jax.Array, length: jax.Array, temperature: jax.Array, top_n: int):
    """Every prompt token's log-probability given the tokens before it (no cache, no decode state).

    tokens [1, width] right-padded to `length` [1] tokens, temperature [1] -> (log-probabilities
    [1, width - 1] of tokens 1.., top ids [1, width - 1, top_n], top log-probs [1, width - 1, top_n]);
    entries past length - 1 are meaningless."""
    model = nnx.merge(graphdef, params)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    segments = (positions < length[:, None]).astype(jnp.int32)
    logits = model(tokens, positions, segments)[0]
    return token_logprobs(logits[:, :-1], temperature[:, None], tokens[:, 1:], top_n)
