"""The deduplication passes over the spools of all processes: bounded memory, split over processes.

Both passes are sort-based joins over fixed-width keys (`dedup_spool.py` holds the rows):

- Exact pass: rows grouped by their 128-bit exact key; every member of a group but the first (in
  record order) is an exact duplicate of the first (`exact_pass`).
- Near pass: band by band, the first occurrences with a non-empty shingle set grouped by that band's
  key; each bucket yields capped candidate pairs (`dedup.capped_pairs`), verified in batches: the
  size bound, the sketch agreement, then the exact Jaccard (`verify`). Pairs at or above the
  threshold are written out; `dedup.resolve_near` turns them into decisions (process 0).

The key space is cut into partitions (key mod P x passes): process p of P takes partitions p, p + P,
..., one per pass, reading each column in chunks and keeping only its partition's rows. `passes` is
chosen so that a partition holds at most `rows_per_pass` rows: memory per process is about 40 bytes x
`rows_per_pass` for the join (64 in the exact pass), plus two flags per row (first occurrence, candidate) and the batch of
pairs being verified, whatever the number of records. Each process writes its results to its own
spool directory; the partitions do not depend on the process, so any number of processes finds the
same pairs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np

from jz3_jax.synth.dedup import capped_pairs, exact_duplicates, jaccard_batch, sketch_agreement
from jz3_jax.synth.dedup_spool import Spools, band_name

EXACT_DTYPE = np.dtype([("dup", "<i8"), ("first", "<i8")])
EDGE_DTYPE = np.dtype([("i", "<i8"), ("j", "<i8"), ("jaccard", "<f8")])
VERIFY_BATCH = 1 << 12  # candidate pairs verified together (up to about 8 KB of memory each)


@dataclasses.dataclass(frozen=True)
class Share:
    """This process's part of the work: partitions `process`, `process + processes`, ..."""

    process: int
    processes: int
    rows_per_pass: int

    def partitions(self, rows: int) -> tuple[int, range]:
        """(number of partitions, the ones this process takes) for a join over `rows` rows."""
        passes = max(1, math.ceil(rows / (self.processes * self.rows_per_pass)))
        count = passes * self.processes
        return count, range(self.process, count, self.processes)


def exact_pass(spools: Spools, share: Share, out: Path) -> int:
    """Write this process's exact duplicates (EXACT_DTYPE rows) to `out`; returns how many."""
    count, mine = share.partitions(spools.total)
    found = 0
    with open(out, "wb") as f:
        for part in mine:
            keys, idx = _partition(spools, "exact.u64", 2, count, part, None)
            dup, first = exact_duplicates(keys[:, 0], keys[:, 1], idx)
            del keys, idx
            rows_out = np.empty(len(dup), EXACT_DTYPE)
            rows_out["dup"], rows_out["first"] = dup, first
            f.write(rows_out.tobytes())
            found += len(dup)
    return found


def _partition(spools: Spools, name: str, width: int, count: int, part: int,
               flags: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(key rows, row numbers) of the rows of column `name` whose first key is in partition `part` of
    `count` (and whose flag is set), in row order; read in chunks."""
    keys, idx = [], []
    for start, rows in spools.chunks(name, np.uint64, width):
        mask = rows[:, 0] % np.uint64(count) == part
        if flags is not None:
            mask &= flags[start:start + len(rows)]
        sel = np.flatnonzero(mask)
        keys.append(rows[sel])
        idx.append(sel + start)
    if not keys:
        return np.zeros((0, width), np.uint64), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(idx)


def read_exact(paths: list[Path]) -> np.ndarray:
    """All processes' exact duplicates (EXACT_DTYPE), sorted by duplicate."""
    rows = np.concatenate([np.fromfile(p, EXACT_DTYPE) for p in paths]) if paths else np.zeros(0, EXACT_DTYPE)
    return rows[np.argsort(rows["dup"], kind="stable")]


def candidates(spools: Spools, exact: np.ndarray) -> np.ndarray:
    """Flags of the rows that take part in the near pass: first occurrences with shingles."""
    flags = np.ones(spools.total, bool)
    flags[exact["dup"]] = False
    for start, index in spools.chunks("index.u64", np.uint64, 2):
        flags[start:start + len(index)] &= index[:, 1] > 0
    return flags


@dataclasses.dataclass
class NearStats:
    """Counts of the near pass (summed over processes for the report)."""

    candidate_pairs: int = 0
    size_rejected: int = 0
    sketch_rejected: int = 0
    jaccard_checked: int = 0
    similar_pairs: int = 0

    def add(self, other: "NearStats") -> None:
        """Add another process's counts."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def near_pass(spools: Spools, flags: np.ndarray, share: Share, bands: int, cap: int, threshold: float,
              margin: float, out: Path, on_band: Callable[[int], None] | None = None) -> NearStats:
    """Write this process's verified similar pairs (EDGE_DTYPE rows) to `out`; returns its counts."""
    count, mine = share.partitions(int(flags.sum()))
    stats = NearStats()
    with open(out, "wb") as f:
        for band in range(bands):
            for part in mine:
                keys, idx = _partition(spools, band_name(band), 1, count, part, flags)
                order = np.argsort(keys[:, 0], kind="stable")  # rows came in record order: ties stay so
                keys, idx = keys[order, 0], idx[order]
                del order
                for i, j in capped_pairs(keys, idx, cap, VERIFY_BATCH):
                    f.write(verify(spools, i, j, threshold, margin, stats).tobytes())
            if on_band is not None:
                on_band(band)
    return stats


def verify(spools: Spools, i: np.ndarray, j: np.ndarray, threshold: float, margin: float,
           stats: NearStats) -> np.ndarray:
    """The pairs (i, j) whose shingle sets have Jaccard >= `threshold` (EDGE_DTYPE rows).

    Cheap checks first: the set sizes (Jaccard <= smaller / larger), then the sketch agreement
    (dropped below `threshold - margin`); the exact Jaccard only for the pairs left.
    """
    stats.candidate_pairs += len(i)
    rows = np.unique(np.concatenate([i, j]))
    index = spools.rows("index.u64", np.uint64, 2, rows)
    sketch = spools.rows("sketch.u8", np.uint8, spools.sketch_width, rows)
    ai, aj = np.searchsorted(rows, i), np.searchsorted(rows, j)
    si, sj = index[ai, 1].astype(np.int64), index[aj, 1].astype(np.int64)
    sized = np.minimum(si, sj) >= threshold * np.maximum(si, sj) - 1e-9
    similar_sketch = sketch_agreement(sketch[ai], sketch[aj]) >= threshold - margin
    stats.size_rejected += int((~sized).sum())
    stats.sketch_rejected += int((sized & ~similar_sketch).sum())
    keep = sized & similar_sketch
    i, j, ai, aj = i[keep], j[keep], ai[keep], aj[keep]
    if len(i) == 0:
        return np.zeros(0, EDGE_DTYPE)
    needed = np.unique(np.concatenate([ai, aj]))  # positions in `rows` of the pairs left
    flat, offsets, counts = spools.shingles(rows[needed], index[needed])
    bi, bj = np.searchsorted(needed, ai), np.searchsorted(needed, aj)
    jaccard = jaccard_batch(flat, offsets[bi], counts[bi], offsets[bj], counts[bj])
    stats.jaccard_checked += len(i)
    similar = jaccard >= threshold
    stats.similar_pairs += int(similar.sum())
    edges = np.empty(int(similar.sum()), EDGE_DTYPE)
    edges["i"], edges["j"], edges["jaccard"] = i[similar], j[similar], jaccard[similar]
    return edges


def read_edges(paths: list[Path]) -> np.ndarray:
    """All processes' verified pairs (EDGE_DTYPE), duplicates included."""
    return np.concatenate([np.fromfile(p, EDGE_DTYPE) for p in paths]) if paths else np.zeros(0, EDGE_DTYPE)
