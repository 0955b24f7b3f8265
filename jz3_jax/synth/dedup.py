"""Exact and near-duplicate detection over problem texts (first occurrence wins).

Exact: the normalised problem text (`text.normalize`) seen before. Near: MinHash over word shingles
with LSH banding to find candidates among the problems kept so far, each candidate then verified by
the exact Jaccard similarity of the two shingle sets. Bands are chosen so that a pair at the
threshold becomes a candidate with probability >= 0.995; the exact check removes the false ones, so
the result does not depend on the MinHash estimate's noise.

How similar is "one number changed"? One replaced word changes up to `k` of a problem's shingles
(k = shingle length), so Jaccard = (L - 2k + 1) / (L + 1) for L words: with k=5 and threshold 0.8 a
single changed number is caught in problems of 49 words or more (typical synthetic problems are
40-150 words); lower the shingle length or the threshold to catch shorter ones.

Memory: per kept problem, its shingle hashes (4 bytes each) and one bucket entry per band.
"""

from __future__ import annotations

import hashlib

import numpy as np

from jz3_jax.synth.text import ngram_hashes, normalize


def lsh_params(threshold: float, num_perm: int, recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows): the most rows per band such that a pair with Jaccard = `threshold` shares a band
    with probability >= `recall` (fewer rows means more candidates to verify, never fewer found)."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class ExactDedup:
    """Remembers kept texts by the digest of their normalised form."""

    def __init__(self) -> None:
        self._seen: dict[bytes, str | int] = {}

    @staticmethod
    def key(text: str) -> bytes:
        """The digest of `text`'s normalised form."""
        return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()

    def find(self, key: bytes) -> str | int | None:
        """The id of the kept record with this key, or None."""
        return self._seen.get(key)

    def add(self, key: bytes, record_id: str | int) -> None:
        """Remember a kept record (the first id for a key stays)."""
        self._seen.setdefault(key, record_id)


class NearDedup:
    """MinHash-LSH index of shingle sets; `check` finds a kept near-duplicate or keeps the new one."""

    def __init__(self, threshold: float, num_perm: int = 128, shingle: int = 5, seed: int = 0) -> None:
        self.threshold, self.shingle = threshold, shingle
        self.bands, self.rows = lsh_params(threshold, num_perm)
        rng = np.random.default_rng(seed)
        # Multiply-shift hashing: h_i(x) = (a_i * x + b_i mod 2**64) >> 32, a_i odd.
        self._a = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self._b = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False)
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._shingles: list[np.ndarray] = []
        self._ids: list[str | int] = []

    def shingles(self, values: np.ndarray) -> np.ndarray:
        """Sorted unique 32-bit shingle hashes of a problem's word values (one for a shorter problem)."""
        return np.unique((ngram_hashes(values, self.shingle, short=True) >> np.uint64(32)).astype(np.uint32))

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """MinHash signature (num_perm uint32) of a non-empty shingle set, vectorised over shingles."""
        x = shingles.astype(np.uint64)[:, None]
        return ((self._a[None, :] * x + self._b[None, :]) >> np.uint64(32)).min(axis=0).astype(np.uint32)

    def check(self, values: np.ndarray, record_id: str | int) -> tuple[str | int, float] | None:
        """(id, Jaccard) of a kept near-duplicate of the problem with word values `values`; else keep it."""
        shingles = self.shingles(values)
        if len(shingles) == 0:
            return None
        signature = self.signature(shingles)
        keys = [signature[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        seen: set[int] = set()
        for bucket, key in zip(self._buckets, keys):
            for j in bucket.get(key, ()):
                if j in seen:
                    continue
                seen.add(j)
                jaccard = _jaccard(shingles, self._shingles[j])
                if jaccard >= self.threshold:
                    return self._ids[j], jaccard
        index = len(self._ids)
        self._ids.append(record_id)
        self._shingles.append(shingles)
        for bucket, key in zip(self._buckets, keys):
            bucket.setdefault(key, []).append(index)
        return None


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
