"""The paged engine's host bookkeeping: each row's pages and page table, admission against the
pool, growth before each decode dispatch, and the paging counters (pure Python/numpy, no JAX).

A row holds the pages of every token it has in the cache plus those the next dispatch writes.
Admission (`admit`) takes the cached prefix pages of the row's tokens and fresh pages for the rest,
when the pool has them and room for the next dispatch's growth of every row (`reserve`); `grow`
gives a running row the pages its next `steps` tokens need. Which row to preempt when the pool runs
dry is the engine's call (the most recently admitted: `order[-1]`); `free` returns a row's pages.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jz3_jax.decoding.buckets import doubling_buckets, group_rows, smallest_at_least
from jz3_jax.decoding.paging import PagePool, page_keys, pages_for
from jz3_jax.decoding.requests import RequestError


def context_width(widths: Sequence[int], start: int, total: int) -> tuple[int, int]:
    """The (suffix width, context width) buckets of a prefill of tokens start..total-1 over a cached
    prefix of `start` tokens: the suffix padded to a width bucket, the context (prefix + suffix,
    what the attention reads) to a width bucket at least as wide."""
    width = smallest_at_least(widths, total - start)
    return width, smallest_at_least(widths, max(width, total))


def paged_prefill_shapes(prompt_bucket: int, max_seq_len: int, max_batch: int, page_size: int,
                         prefix_cache: bool) -> list[tuple[int, int, int]]:
    """Every (rows, width, context pages) a paged prefill can have: per (width, context) bucket pair
    1 row or as many as keep rows x context within `max_seq_len` (without a prefix cache the context
    is the width: the contiguous engine's shapes)."""
    widths = doubling_buckets(prompt_bucket, max_seq_len)
    shapes = set()
    for width in widths:
        for context in (w for w in widths if w >= width and (prefix_cache or w == width)):
            for rows in {1, group_rows(context, max_seq_len, max_batch)}:
                shapes.add((rows, width, pages_for(context, page_size)))
    return sorted(shapes)


class PagedRows:
    """Pages, page tables and admission order of `rows` rows over a `PagePool`."""

    def __init__(self, rows: int, max_seq_len: int, page_size: int, num_pages: int, prefix_cache: bool):
        self.pool = PagePool(num_pages, page_size, prefix_cache)
        self.page_size = page_size
        self.pages_per_row = math.ceil(max_seq_len / page_size)
        self.table = np.zeros((rows, self.pages_per_row), np.int32)
        self._pages: list[list[int]] = [[] for _ in range(rows)]
        self.order: list[int] = []  # running rows, least recently admitted first
        self._wave: dict[int, int] = {}  # pages computed by the current admission wave -> their prefill round
        self.prefix_hit_tokens = 0
        self.prefill_tokens_computed = 0
        self.prefill_tokens_total = 0
        self.preemptions = 0

    def check(self, tokens: int) -> None:
        """Raise RequestError unless a row of `tokens` cached tokens fits the pool on its own."""
        if pages_for(tokens, self.page_size) > self.pool.usable:
            raise RequestError(f"a request of {tokens + 1} tokens (prompt + max_new_tokens) needs more than the "
                               f"engine's pool of {self.pool.usable} pages of {self.page_size} (engine.num_pages)")

    def short(self, row: int, tokens: int) -> int:
        """Pages `row` lacks to hold `tokens` tokens."""
        return max(0, pages_for(tokens, self.page_size) - len(self._pages[row]))

    def begin_wave(self) -> None:
        """Start admitting a new set of rows (their prefills follow `admit`'s rounds)."""
        self._wave = {}

    def admit(self, row: int, tokens: Sequence[int], upto: int, reserve: int) -> tuple[int, int] | None:
        """Give `row` the pages of `tokens` (cached prefix pages shared, fresh ones for the rest) if the
        pool can also grow the row to `upto` tokens and keep `reserve` pages for the other rows.

        Returns None (nothing taken), or (the cached prefix length: the suffix to compute starts
        there, the prefill round). The row's full pages are published at once, so a later row of the
        same wave shares them too: its round follows the rounds of the rows that compute its prefix
        (round 0 reads only pages computed before the wave), and the prefills run round by round."""
        n = len(tokens)
        upto = max(upto, n)
        # At least one token is computed (its logits start the row): a full-hit prompt recomputes its last page.
        hits = self.pool.lookup(page_keys(tokens, self.page_size, (n - 1) // self.page_size))
        need = pages_for(upto, self.page_size) - len(hits)
        if need + reserve > self.pool.available() - self.pool.idle_among(hits):
            return None
        self.pool.hold(hits)
        self._set(row, hits + self.pool.take(pages_for(n, self.page_size) - len(hits)))
        self.order.append(row)
        prefill_round = max((self._wave[page] + 1 for page in hits if page in self._wave), default=0)
        self._wave.update((page, prefill_round) for page in self._pages[row][len(hits):])
        self.publish(row, tokens)
        start = len(hits) * self.page_size
        self.prefix_hit_tokens += start
        self.prefill_tokens_computed += n - start
        self.prefill_tokens_total += n
        return start, prefill_round

    def publish(self, row: int, tokens: Sequence[int]) -> None:
        """Offer the full pages of `tokens` (prefilled into `row`) to later prompts."""
        full = len(tokens) // self.page_size
        self.pool.publish(page_keys(tokens, self.page_size, full), self._pages[row][:full])

    def grow(self, row: int, n: int) -> None:
        """Give `row` `n` more pages (the caller checked `pool.available()`)."""
        self._set(row, self._pages[row] + self.pool.take(n))

    def growth(self, lives: Sequence, steps: int) -> int:
        """Pages the running rows (`lives[row]`: an engine `Live`) lack for their next `steps` tokens."""
        return sum(self.short(row, lives[row].tokens_after(steps)) for row in self.order)

    def make_room(self, lives: Sequence, steps: int) -> list[int]:
        """Give every running row pages for its next `steps` tokens, oldest first; when the pool runs
        dry, free the most recently admitted row (the row itself, if it is that one). Returns the
        rows freed so, in that order (preempted: the engine requeues their requests)."""
        preempted: list[int] = []
        for row in list(self.order):
            if row in preempted:
                continue
            short = self.short(row, lives[row].tokens_after(steps))
            while short > self.pool.available() and row not in preempted:
                preempted.append(self.order[-1])
                self.free(self.order[-1])
                self.preemptions += 1
            if row not in preempted and short:
                self.grow(row, short)
        return preempted

    def free(self, row: int) -> None:
        """Return `row`'s pages (the last ones first: a prefix's deeper pages are evicted before its root)."""
        self.pool.release(self._pages[row][::-1])
        self._set(row, [])
        if row in self.order:
            self.order.remove(row)

    def _set(self, row: int, pages: list[int]) -> None:
        self._pages[row] = pages
        self.table[row] = 0
        self.table[row, : len(pages)] = pages

    def stats(self) -> dict[str, int]:
        """The paging counters (see `Engine.stats`)."""
        return dict(pages_in_use=self.pool.in_use(), pages_total=self.pool.usable,
                    pages_cached=self.pool.cached_pages(), prefix_hit_tokens=self.prefix_hit_tokens,
                    prefill_tokens_computed=self.prefill_tokens_computed,
                    prefill_tokens_total=self.prefill_tokens_total, preemptions=self.preemptions)
