"""The host side of the paged KV cache: a page pool with a prefix cache (pure Python, no JAX).

The device holds `num_pages` pages per layer (see `jz3_jax.model.paged_attention`); page 0 is the
scratch page and never handed out. `PagePool` tracks which pages are free, which rows hold them
(a reference count per page) and which full pages hold a known run of tokens:

- Prefix cache: a full page is keyed by a hash chain of the tokens before and in it
  (`page_keys`: key_i = H(key_{i-1}, tokens of page i)), so one key names one whole prefix. After a
  row's prompt is prefilled its full pages are published under their keys; a later prompt with the
  same prefix takes those pages (`match`) instead of computing them again.
- Pages are reference counted; a cached page no row holds stays cached (its keys/values stay valid)
  until the pool needs it: such pages are evicted least recently used first.
"""

from __future__ import annotations

import collections
import hashlib
import math
from typing import Sequence

import numpy as np


def pages_for(tokens: int, page_size: int) -> int:
    """Pages that hold `tokens` tokens."""
    return -(-max(0, tokens) // page_size)


def page_keys(tokens: Sequence[int], page_size: int, pages: int) -> list[bytes]:
    """The prefix-cache keys of the first `pages` full pages of `tokens` (a hash chain: each key
    covers every token up to the end of its page)."""
    keys, parent = [], b""
    ids = np.asarray(tokens[: pages * page_size], np.int64)
    for i in range(pages):
        parent = hashlib.blake2b(parent + ids[i * page_size:(i + 1) * page_size].tobytes(), digest_size=16).digest()
        keys.append(parent)
    return keys


def pool_pages(engine_cfg, model_cfg, dtype_bytes: int) -> int:
    """Pages in the pool (the scratch page included) for the `engine` section and a model config:
    `engine.num_pages` when set, else as many as `engine.kv_cache_gib` holds, else the bytes of a
    contiguous cache of `max_batch` x `max_seq_len` (+ the scratch page)."""
    if engine_cfg.num_pages > 0:
        return engine_cfg.num_pages
    if engine_cfg.kv_cache_gib > 0:
        page_bytes = (2 * model_cfg.num_layers * model_cfg.num_kv_heads * engine_cfg.page_size
                      * model_cfg.resolved_head_dim * dtype_bytes)
        return int(engine_cfg.kv_cache_gib * 2**30 // page_bytes)
    return default_pages(engine_cfg.max_batch, engine_cfg.max_seq_len, engine_cfg.page_size)


def default_pages(max_batch: int, max_seq_len: int, page_size: int) -> int:
    """The pool of the same bytes as a contiguous `max_batch` x `max_seq_len` cache, plus scratch."""
    return max_batch * math.ceil(max_seq_len / page_size) + 1


class PagePool:
    """Free pages, per-page reference counts and the prefix cache of `num_pages` pages."""

    def __init__(self, num_pages: int, page_size: int, prefix_cache: bool = True):
        if num_pages < 2 or page_size < 1:
            raise ValueError(f"a page pool needs >= 2 pages (one is scratch) and page_size >= 1; got {num_pages}, "
                             f"{page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.prefix_cache = prefix_cache
        self._free = list(range(num_pages - 1, 0, -1))  # popped from the end: page 1 first
        self._refs = [0] * num_pages
        self._cached: dict[bytes, int] = {}  # prefix key -> page
        self._key_of: dict[int, bytes] = {}
        self._idle: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unheld; oldest first

    @property
    def usable(self) -> int:
        """Pages a row can ever hold (all but the scratch page)."""
        return self.num_pages - 1

    def available(self) -> int:
        """Pages `take` can hand out now: free ones and cached ones no row holds."""
        return len(self._free) + len(self._idle)

    def in_use(self) -> int:
        """Pages some row holds."""
        return self.usable - self.available()

    def cached_pages(self) -> int:
        """Pages holding a published prefix (held or idle)."""
        return len(self._key_of)

    def lookup(self, keys: Sequence[bytes]) -> list[int]:
        """The cached pages of the longest prefix of `keys` (nothing is taken)."""
        pages = []
        if self.prefix_cache:
            for key in keys:
                page = self._cached.get(key)
                if page is None:
                    break
                pages.append(page)
        return pages

    def idle_among(self, pages: Sequence[int]) -> int:
        """How many of `pages` are cached pages no row holds (they count in `available`)."""
        return sum(page in self._idle for page in pages)

    def hold(self, pages: Sequence[int]) -> None:
        """Add a reference to each of `pages` (cached pages a row now reads)."""
        for page in pages:
            self._refs[page] += 1
            self._idle.pop(page, None)

    def take(self, n: int) -> list[int]:
        """`n` pages for a row (reference 1 each): free ones first, then the least recently used
        idle cached ones (forgotten by the prefix cache). The caller checks `available` first."""
        if n > self.available():
            raise RuntimeError(f"{n} pages asked, {self.available()} available")
        pages = []
        for _ in range(n):
            if self._free:
                page = self._free.pop()
            else:
                page, _ = self._idle.popitem(last=False)
                del self._cached[self._key_of.pop(page)]
            self._refs[page] = 1
            pages.append(page)
        return pages

    def publish(self, keys: Sequence[bytes], pages: Sequence[int]) -> None:
        """Record that `pages` (held, full, written) hold the prefixes `keys`: later prompts may share
        them. A key already cached keeps its page (this row's copy stays private)."""
        if not self.prefix_cache:
            return
        for key, page in zip(keys, pages):
            if key not in self._cached and page not in self._key_of:
                self._cached[key] = page
                self._key_of[page] = key

    def release(self, pages: Sequence[int]) -> None:
        """Drop a reference to each of `pages`: an unheld page becomes free, or idle if cached."""
        for page in pages:
            self._refs[page] -= 1
            if self._refs[page] == 0:
                if page in self._key_of:
                    self._idle[page] = None  # most recently used last
                else:
                    self._free.append(page)
