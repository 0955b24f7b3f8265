"""Text normalisation and word n-gram hashing, shared by deduplication and decontamination.

Normalised text is NFKC, lowercase, with every run of punctuation/symbols (anything not a letter or
digit, underscore included) replaced by a space and whitespace collapsed: "Janet’s  ducks lay 16
eggs." and "janet's ducks lay 16 eggs" both become "janet s ducks lay 16 eggs". Both sides of every
comparison go through the same function.

A word maps to a deterministic 64-bit value v (blake2b, cached), and the n-gram starting at word i
to sum(v[i+k] * M**k, k < n) mod 2**64 for an odd constant M. With prefix sums S of v[t] * M**t,
that is (S[i+n] - S[i]) * M**-i: a few numpy operations per text whatever n is (M is odd, so it has
an inverse modulo 2**64). Hashes are stable across processes and runs (no Python `hash()` salt).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_WORD = re.compile(r"[^\W_]+")
_M = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio)
_M_INV = pow(_M, -1, 1 << 64)
_MASK = (1 << 64) - 1


def words(text: str) -> list[str]:
    """The normalised words of `text` (see the module docstring)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def normalize(text: str) -> str:
    """Lowercase, NFKC, punctuation -> space, whitespace collapsed (see the module docstring)."""
    return " ".join(words(text))


class _WordValues(dict):
    """word -> 64-bit value; a missing word is hashed (blake2b) and remembered, up to `limit` words
    (then the cache starts over: values never change, only how often they are recomputed)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, word: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        value = self[word] = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return value


class WordHasher:
    """Maps words to deterministic uint64 values; keeps a bounded cache (one instance per stage run).

    `cache_words` bounds the cache (about 150 bytes a word), so memory stays flat however many
    distinct words (numbers, LaTeX tokens) a large input has.
    """

    def __init__(self, cache_words: int = 100_000) -> None:
        self._cache = _WordValues(cache_words)

    def __call__(self, tokens: list[str]) -> np.ndarray:
        return np.fromiter(map(self._cache.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


_POW = np.ones(1, np.uint64)  # M**t mod 2**64
_POW_INV = np.ones(1, np.uint64)  # M**-t mod 2**64


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    global _POW, _POW_INV
    if len(_POW) < length:
        size = max(length, 2 * len(_POW), 1024)
        pw, inv = [1] * size, [1] * size
        for t in range(1, size):
            pw[t], inv[t] = pw[t - 1] * _M & _MASK, inv[t - 1] * _M_INV & _MASK
        _POW, _POW_INV = np.array(pw, np.uint64), np.array(inv, np.uint64)
    return _POW[:length], _POW_INV[:length]


def ngram_hashes(values: np.ndarray, n: int, *, short: bool = False) -> np.ndarray:
    """uint64 hashes of every window of `n` consecutive word values (length len(values) - n + 1).

    A text with fewer than `n` words has no n-grams; with `short=True` it gets one hash of all its
    words instead (equal to `whole_hash(values)`). An empty text has none.
    """
    length = len(values)
    if length < n:
        return np.array([whole_hash(values)], np.uint64) if (short and length) else np.zeros(0, np.uint64)
    pw, inv = _powers(length + 1)
    prefix = np.zeros(length + 1, np.uint64)
    np.cumsum(values * pw[:length], out=prefix[1:])  # uint64 arithmetic wraps modulo 2**64
    count = length - n + 1
    return (prefix[n:] - prefix[:count]) * inv[:count]


def whole_hash(values: np.ndarray) -> int:
    """The hash of all of `values` as one n-gram (n = len(values))."""
    h, p = 0, 1
    for v in values.tolist():
        h, p = (h + v * p) & _MASK, p * _M & _MASK
    return h
