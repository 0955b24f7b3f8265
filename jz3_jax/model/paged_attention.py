"""A paged KV cache: every layer's keys/values live in a pool of fixed-size pages, each row's
tokens in the pages its page table names.

Layout (the TPU Pallas paged-attention kernel's, so no relayout there): `k_pages` / `v_pages` of
shape [kv_heads, pages, page_size, head_dim]. Listed layers: a tuple of per-layer pools of
`num_pages` pages each, like `KVCache`. Stacked (scanned) layers: ONE pool of
num_layers x num_pages pages, layer l's pages at l * num_pages + p (`first_page`), so the layer
scan carries the pool and writes each new token into it in place; a pool with a leading layers
axis would be sliced out per layer and stacked back (a copy of the whole pool per step), and
XLA:TPU would also re-lay it out for the write. Page 0 of each layer is a scratch page that is
never handed to a row: unused page-table entries point at it, and the writes of padding tokens
and inactive rows land there. Token i of a row (its position i) lives at offset i % page_size of
page `page_table[row, i // page_size]` (+ the layer's `first_page`), so a row's tokens always sit
at positions 0..length-1. Page tables hold per-layer page numbers; the layers add `first_page`.

Attention reads through the page table: `paged_decode_attention` (one query per row: the decode
step) with the gather path below on CPU/GPU or the Pallas kernel on TPU
(`jz3_jax.model.paged_kernels`), and `paged_prefill_attention` (a chunk of new tokens per row
after a possibly cached prefix) always with the gather path.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

PAGED_IMPLS = ("gather", "pallas")


class PagedKVCache(NamedTuple):
    """The page pools of every layer, each row's page table and how many tokens each row holds."""

    k: jax.Array | tuple[jax.Array, ...]  # [kv_heads, layers x pages, page_size, head_dim] or a tuple per layer
    v: jax.Array | tuple[jax.Array, ...]
    page_table: jax.Array  # [rows, pages_per_row] int32 (0 = the scratch page)
    lengths: jax.Array  # [rows] int32: tokens of the row already in the cache

    @classmethod
    def init(cls, num_layers: int, num_pages: int, page_size: int, kv_heads: int, head_dim: int, rows: int,
             pages_per_row: int, dtype, stacked: bool = True) -> "PagedKVCache":
        shape = (kv_heads, num_pages, page_size, head_dim)
        if stacked:
            k, v = (jnp.zeros((kv_heads, num_layers * num_pages, page_size, head_dim), dtype) for _ in range(2))
        else:
            k, v = (tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)) for _ in range(2))
        return cls(k, v, jnp.zeros((rows, pages_per_row), jnp.int32), jnp.zeros((rows,), jnp.int32))


class PagedSlots(NamedTuple):
    """What each layer needs to read and write a paged cache (the `cache_slots` of a paged call)."""

    page_table: jax.Array  # [rows, pages] int32
    lengths: jax.Array  # [rows] int32: tokens in the cache once this call's tokens are written
    first_page: jax.Array | int = 0  # this layer's first page in a stacked pool (0: a per-layer pool)

    def layer_table(self) -> jax.Array:
        """The page table in the pool's own page numbers (this layer's pages)."""
        return self.page_table + self.first_page


def write_pages(k_pages: jax.Array, v_pages: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array,
                segment_ids: jax.Array, page_table: jax.Array, first_page: jax.Array | int = 0
                ) -> tuple[jax.Array, jax.Array]:
    """The pools after writing one layer's new keys/values k, v [rows, t, kv_heads, head_dim] at
    their `positions` [rows, t] into the pages `page_table` names (+ `first_page`, the layer's
    first page in a stacked pool); tokens of segment 0 (padding, inactive rows) go to the layer's
    scratch page."""
    page_size = k_pages.shape[2]
    index = jnp.minimum(positions // page_size, page_table.shape[1] - 1)
    page = jnp.where(segment_ids != 0, jnp.take_along_axis(page_table, index, axis=1), 0) + first_page
    offset = positions % page_size
    head = jnp.arange(k_pages.shape[0], dtype=page.dtype)[:, None, None]

    def put(pages, new):
        # One scatter index per (kv head, row, token), head_dim the only window dim: XLA:TPU then
        # writes into the pool's own layout (with (kv_heads, head_dim) windows it re-lays the
        # whole pool out, kv heads minor, and copies it back).
        return pages.at[head, page[None], offset[None]].set(new.transpose(2, 0, 1, 3).astype(pages.dtype))

    return put(k_pages, k), put(v_pages, v)


def gather_pages(pages: jax.Array, page_table: jax.Array) -> jax.Array:
    """A row-contiguous view of the pages each row names: pages [kv_heads, P, page_size, d],
    page_table [rows, n] -> [kv_heads, rows, n * page_size, d] (kv heads first: the layout the
    grouped attention contracts over, so no transposed copy follows)."""
    kv_heads, num_pages, page_size, d = pages.shape
    rows, n = page_table.shape
    # One take of whole [page_size * d] rows from a 2-D view (an embedding-style lookup): XLA:CPU runs it
    # faster than the 4-D gather `pages[:, page_table]`.
    index = (jnp.arange(kv_heads, dtype=page_table.dtype)[:, None, None] * num_pages + page_table[None]).reshape(-1)
    rows_2d = jnp.take(pages.reshape(kv_heads * num_pages, page_size * d), index, axis=0, mode="clip")
    return rows_2d.reshape(kv_heads, rows, n * page_size, d)


def _softmax_attend(scores: jax.Array, mask: jax.Array, v: jax.Array, spec: str) -> jax.Array:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum(spec, probs, v)


DECODE_CHUNK_TOKENS = {"cpu": 64}  # cache tokens per step of the gather decode loop, by backend
DEFAULT_CHUNK_TOKENS = 512  # elsewhere (GPU): fewer, larger steps


def decode_chunk_pages(page_size: int, backend: str | None = None) -> int:
    """Pages one step of `gather_decode_attention`'s loop reads per row: about
    `DECODE_CHUNK_TOKENS[backend]` tokens (on CPU a chunk of 64 tokens stays in cache between
    its gather and its two dots)."""
    tokens = DECODE_CHUNK_TOKENS.get(backend or jax.default_backend(), DEFAULT_CHUNK_TOKENS)
    return max(1, tokens // page_size)


def gather_decode_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, lengths: jax.Array,
                            page_table: jax.Array, sliding_window: int = 0, chunk_pages: int | None = None
                            ) -> jax.Array:
    """`paged_decode_attention` by gathering each row's pages (any backend), `chunk_pages` page-table
    columns at a time with an online softmax, for as many chunks as the longest row needs.

    Gathering every row's whole page table at once costs a copy of rows x pages_per_row pages per
    layer, written out and read back (on CPU that copy cost more than the attention itself); a
    chunk at a time stays small, and the chunks past the longest row are never read."""
    rows, heads, d = q.shape
    kv_heads, _, page_size, _ = k_pages.shape
    group = heads // kv_heads
    chunk = chunk_pages or decode_chunk_pages(page_size)
    chunks = -(-page_table.shape[1] // chunk)
    table = jnp.pad(page_table, ((0, 0), (0, chunks * chunk - page_table.shape[1])))  # scratch-page columns
    span = chunk * page_size
    # [kv_heads, rows] batch order (the gathered keys' own): the small query and output are transposed instead.
    q = q.reshape(rows, kv_heads, group, d).transpose(1, 0, 2, 3).astype(k_pages.dtype)
    first = jnp.maximum(lengths - sliding_window, 0) if sliding_window > 0 else jnp.zeros_like(lengths)

    def step(c, carry):
        top, total, acc = carry  # running max and sum of exp(score - max), weighted values: [k, b, g(, d)]
        cols = jax.lax.dynamic_slice_in_dim(table, c * chunk, chunk, axis=1)
        k, v = gather_pages(k_pages, cols), gather_pages(v_pages, cols)
        scores = jnp.einsum("kbgd,kbsd->kbgs", q, k, preferred_element_type=jnp.float32)
        pos = c * span + jnp.arange(span, dtype=jnp.int32)[None, :]
        mask = (pos < lengths[:, None]) & (pos >= first[:, None])
        scores = jnp.where(mask[None, :, None, :], scores, -jnp.inf)
        new_top = jnp.maximum(top, scores.max(axis=-1))
        base = jnp.where(jnp.isfinite(new_top), new_top, 0.0)  # rows with nothing yet: exp(-inf) = 0, no NaN
        probs = jnp.exp(scores - base[..., None])
        rescale = jnp.exp(top - base)
        total = total * rescale + probs.sum(axis=-1)
        acc = acc * rescale[..., None] + jnp.einsum("kbgs,kbsd->kbgd", probs.astype(v.dtype), v,
                                                    preferred_element_type=jnp.float32)
        return new_top, total, acc

    shape = (kv_heads, rows, group)
    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros((*shape, d), jnp.float32))
    needed = (jnp.max(lengths) + span - 1) // span
    _, total, acc = jax.lax.fori_loop(0, jnp.minimum(needed, chunks), step, init)
    out = acc / jnp.where(total > 0, total, 1.0)[..., None]  # a row with no tokens (inactive) gives zeros
    return out.transpose(1, 0, 2, 3).reshape(rows, heads, d).astype(q.dtype)


def paged_decode_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, lengths: jax.Array,
                           page_table: jax.Array, *, impl: str = "gather", sliding_window: int = 0) -> jax.Array:
    """One query per row over that row's cached tokens.

    q [rows, heads, head_dim] ALREADY multiplied by the softmax scale; k_pages / v_pages
    [kv_heads, num_pages, page_size, head_dim]; lengths [rows] (tokens in the cache, the query's
    own included); page_table [rows, pages_per_row] -> [rows, heads, head_dim]. Row r attends
    positions [max(0, lengths[r] - sliding_window), lengths[r]). `impl`: "gather" (a JAX gather,
    any backend) or "pallas" (`jz3_jax.model.paged_kernels`, TPU, no sliding window)."""
    if impl == "gather":
        return gather_decode_attention(q, k_pages, v_pages, lengths, page_table, sliding_window)
    if impl == "pallas":
        if sliding_window > 0:
            raise ValueError("the Pallas paged-attention kernel has no sliding window; use impl='gather'")
        from jz3_jax.model.paged_kernels import pallas_paged_decode_attention  # TPU only: imported when asked

        return pallas_paged_decode_attention(q, k_pages, v_pages, lengths, page_table)
    raise ValueError(f"paged attention impl must be one of {', '.join(PAGED_IMPLS)}; got {impl!r}")


def paged_prefill_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, positions: jax.Array,
                            lengths: jax.Array, page_table: jax.Array, sliding_window: int = 0) -> jax.Array:
    """New queries q [rows, t, heads, d] (unscaled) at `positions` [rows, t] over every cached token
    of their row (a cached prefix plus this chunk, already written): causal, at most `lengths`
    [rows] tokens, sliding window as in training. Returns the grouped layout
    [rows, kv_heads, group, t, d] of `attention.dot_product_attention`."""
    rows, t, heads, d = q.shape
    kv_heads = k_pages.shape[0]
    group = heads // kv_heads
    k = gather_pages(k_pages, page_table)
    v = gather_pages(v_pages, page_table)
    q = q.reshape(rows, t, kv_heads, group, d).transpose(2, 0, 3, 1, 4).astype(k.dtype)  # [k, b, g, t, d]
    scores = jnp.einsum("kbgtd,kbsd->kbgts", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    key_pos = jnp.arange(k.shape[2], dtype=jnp.int32)[None, None, :]
    delta = positions[:, :, None] - key_pos
    mask = (key_pos < lengths[:, None, None]) & (delta >= 0)
    if sliding_window > 0:
        mask &= delta < sliding_window
    return _softmax_attend(scores, mask[None, :, None], v, "kbgts,kbsd->kbgtd").transpose(1, 0, 2, 3, 4)
