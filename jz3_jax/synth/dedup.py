"""Exact and near-duplicate detection over problem texts: the per-record features and the array
algorithms (`dedup_index.py` runs them over a pod's spools in bounded memory).

Exact: two problems of one kind are exact duplicates when their normalised texts (`text.normalize`)
are equal (compared by a 128-bit digest). Of a group, the first in record order stays.

Near: MinHash over word shingles with LSH banding finds candidate pairs, each verified by the exact
Jaccard similarity of the two shingle sets, so the result does not depend on the MinHash noise. Bands
are chosen so that a pair at the threshold shares a band with probability >= 0.995. A problem is a
near duplicate when a verified pair joins it to an earlier problem that was kept (first occurrence
wins, as a sequential pass would decide; `resolve_near`).

Bounded verification: within an LSH bucket (problems with one band in common), a problem is checked
against at most `cap` earlier members, chosen by record order alone (the bucket's first members and
the ones just before it; `capped_pairs`), so a bucket of a templated family (thousands of similar
problems under the threshold) costs `cap` checks per member, not one per earlier member. Before the exact Jaccard, two cheap checks drop pairs that cannot reach the threshold: the set
sizes (Jaccard <= min/max) and the agreement of 8-bit MinHash sketches, with a margin of 4 standard
deviations below the threshold (`sketch_margin`).

How similar is "one number changed"? One replaced word changes up to `k` of a problem's shingles
(k = shingle length), so Jaccard = (L - 2k + 1) / (L + 1) for L words: with k=5 and threshold 0.8 a
single changed number is caught in problems of 49 words or more (typical synthetic problems are
40-150 words); lower the shingle length or the threshold to catch shorter ones.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator

import numpy as np

from jz3_jax.synth.text import ngram_hashes, normalize

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def lsh_params(threshold: float, num_perm: int, recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows): the most rows per band such that a pair with Jaccard = `threshold` shares a band
    with probability >= `recall` (fewer rows means more candidates to verify, never fewer found)."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def sketch_margin(threshold: float, num_perm: int) -> float:
    """How far below `threshold` the sketch agreement of a pair may fall before the pair is dropped
    unchecked: 4 standard deviations of the agreement of a pair at the threshold (at least 0.05). A pair
    at the threshold is dropped with probability about 3e-5, far below the 5e-3 with which the banding
    itself misses it; a pair 0.04 above the threshold, with probability under 1e-8."""
    return max(0.05, 4.0 * math.sqrt(threshold * (1.0 - threshold) / num_perm))


def exact_key(kind: str, problem: str) -> np.ndarray:
    """The 128-bit digest (two uint64) of a problem's kind and normalised text."""
    digest = hashlib.blake2b(f"{kind}\n{normalize(problem)}".encode(), digest_size=16).digest()
    return np.frombuffer(digest, np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the 64 output bits (uint64 arrays wrap)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


class MinHasher:
    """Shingles, MinHash signature, LSH band keys and 8-bit sketch of a problem's word values."""

    def __init__(self, threshold: float, num_perm: int = 128, shingle: int = 5, seed: int = 0) -> None:
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.bands, self.rows = lsh_params(threshold, num_perm)
        rng = np.random.default_rng(seed)
        # Multiply-shift hashing: h_i(x) = (a_i * x + b_i mod 2**64) >> 32, a_i odd.
        self._a = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self._b = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False)
        self._row_mult = rng.integers(0, 2**64, self.rows, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self._kind_salt = rng.integers(0, 2**64, 8, dtype=np.uint64, endpoint=False)

    def shingles(self, values: np.ndarray) -> np.ndarray:
        """Sorted unique 32-bit shingle hashes of a problem's word values (one for a shorter problem)."""
        return np.unique((ngram_hashes(values, self.shingle, short=True) >> np.uint64(32)).astype(np.uint32))

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """MinHash signature (num_perm uint32) of a non-empty shingle set, vectorised over shingles."""
        x = shingles.astype(np.uint64)[:, None]
        return ((self._a[None, :] * x + self._b[None, :]) >> np.uint64(32)).min(axis=0).astype(np.uint32)

    def features(self, kind_index: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shingles, band keys (bands uint64), sketch (num_perm uint8)) of one problem; an empty problem
        has no shingles, and zero keys and sketch (it is never a near-duplicate candidate)."""
        shingles = self.shingles(values)
        if len(shingles) == 0:
            return shingles, np.zeros(self.bands, np.uint64), np.zeros(self.num_perm, np.uint8)
        signature = self.signature(shingles)
        rows = signature[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        keys = _mix((rows * self._row_mult[None, :]).sum(axis=1, dtype=np.uint64) + self._kind_salt[kind_index])
        return shingles, keys, (signature & np.uint32(0xFF)).astype(np.uint8)


def exact_duplicates(hi: np.ndarray, lo: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(duplicates, their first occurrences): record numbers `idx` grouped by the key (hi, lo); every
    member of a group but the first (lowest `idx`) is a duplicate of the first."""
    if len(idx) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((idx, lo, hi))
    hi, lo, idx = hi[order], lo[order], idx[order].astype(np.int64)
    new = np.ones(len(idx), bool)
    new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    first = idx[np.flatnonzero(new)][np.cumsum(new) - 1]
    return idx[~new], first[~new]


def capped_pairs(keys: np.ndarray, idx: np.ndarray, cap: int,
                 batch: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate pairs (earlier, later) of one band: `keys` sorted, `idx` ascending within equal keys.

    In each bucket (run of equal keys) a member is paired with at most `cap` members before it: the
    bucket's first `cap - cap // 2` members (its heads, the earliest problems) and the `cap // 2`
    members just before it (near-duplicates written close together). A bucket of m members gives
    fewer than `cap` * m pairs. Yields batches of at most `batch` pairs, all the pairs of a run of
    members together (so a batch reads few distinct problems).
    """
    n = len(keys)
    if n < 2:
        return
    new = np.ones(n, bool)
    new[1:] = keys[1:] != keys[:-1]
    bucket = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, n))
    member = sizes[bucket] >= 2
    if not member.any():
        return
    idx, bucket = idx[member], bucket[member]  # buckets stay contiguous: only singletons are dropped
    pos = np.flatnonzero(member) - starts[bucket]
    begin = np.zeros(len(starts), np.int64)  # where each bucket begins in the compressed arrays
    begin[bucket[pos == 0]] = np.flatnonzero(pos == 0)
    heads, step = cap - cap // 2, max(1, batch // cap)
    for first in range(0, len(idx), step):
        at = np.arange(first, min(first + step, len(idx)))
        p, b = pos[at], begin[bucket[at]]
        earlier, later = [], []
        for r in range(heads):
            m = p > r
            earlier.append(idx[b[m] + r])
            later.append(idx[at[m]])
        for d in range(1, cap // 2 + 1):
            m = p - d >= heads
            earlier.append(idx[at[m] - d])
            later.append(idx[at[m]])
        earlier_all, later_all = np.concatenate(earlier), np.concatenate(later)
        if len(later_all):
            yield earlier_all, later_all


def sketch_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of equal entries of paired sketch rows (an estimate of the Jaccard similarity)."""
    return (a == b).mean(axis=1)


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + c) for each (s, c)."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0, dtype=np.int64) - np.repeat(ends - counts - starts, counts)


def jaccard_batch(flat: np.ndarray, off_a: np.ndarray, cnt_a: np.ndarray, off_b: np.ndarray,
                  cnt_b: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of many pairs of sorted unique uint32 sets stored in `flat`: set k of
    side a is flat[off_a[k]:off_a[k] + cnt_a[k]] (non-empty), likewise side b."""
    m = len(off_a)
    if m == 0:
        return np.zeros(0)
    pair_a = np.repeat(np.arange(m, dtype=np.uint64), cnt_a) << np.uint64(32)
    pair_b = np.repeat(np.arange(m, dtype=np.uint64), cnt_b) << np.uint64(32)
    a = pair_a | flat[concat_ranges(off_a, cnt_a)].astype(np.uint64)
    b = pair_b | flat[concat_ranges(off_b, cnt_b)].astype(np.uint64)
    merged = np.sort(np.concatenate([a, b]), kind="stable")  # two sorted runs: one linear merge
    equal = merged[1:] == merged[:-1]
    inter = np.bincount((merged[1:][equal] >> np.uint64(32)).astype(np.int64), minlength=m)
    return inter / (cnt_a + cnt_b - inter)


def resolve_near(i: np.ndarray, j: np.ndarray, jaccard: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which problems are near duplicates, given verified pairs (i < j, Jaccard >= threshold; pairs may
    repeat): arrays (j, i, Jaccard) sorted by j, where i is the earliest kept problem paired with j
    (a problem is kept when no earlier kept problem is paired with it: the decisions of one pass in
    record order)."""
    removed: dict[int, tuple[int, float]] = {}
    order = np.lexsort((i, j))
    for jj, ii, value in zip(j[order].tolist(), i[order].tolist(), jaccard[order].tolist()):
        if jj not in removed and ii not in removed:
            removed[jj] = (ii, value)
    dup = np.fromiter(removed, np.int64, len(removed))
    first = np.fromiter((v[0] for v in removed.values()), np.int64, len(removed))
    value = np.fromiter((v[1] for v in removed.values()), np.float64, len(removed))
    return dup, first, value
