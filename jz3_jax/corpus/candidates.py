"""The snippets of a `corpus` run, held compactly: 32 bytes of memory per snippet, the texts on local disk.

    store = CandidateStore()
    store.add(sid, source_index, key, text)          # in reading order; key None: a source of weight 0
    picked = store.pick(max_snippets)                # dedup + weighted sample: indices, in output order
    store.write(path, picked)                        # the snippets.jsonl lines, in that order
    store.counts(num_sources)                        # per source: unique snippets, duplicates, kept

Each snippet's JSON line is appended to an unnamed temporary file (in `TMPDIR`, deleted when the
store is closed or the process ends) as it is cut; memory keeps only fixed-width columns: the
64-bit content id (the 16 hex digits of `content_id`, as an integer), the sampling key (float64),
the line's byte offset and length in the spill file, and the source index. A snippet is a duplicate
when its id was added before (first occurrence wins, across all sources, as the in-memory `seen` set
decided it); the sample is the `max_snippets` candidates with the largest keys, ties broken by id,
which is exactly the order of sorting (-key, id) over all texts in memory.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from array import array

import numpy as np

from jz3_jax.runtime.paths import atomic_write


class CandidateStore:
    """Every snippet of a run in reading order (see the module docstring); a context manager."""

    def __init__(self, directory: str | None = None) -> None:
        self._spill = tempfile.TemporaryFile(dir=directory)
        self._size = 0
        self._ids = array("Q")  # content id as an integer
        self._keys = array("d")  # sampling key; NaN: not a candidate (weight 0)
        self._offsets = array("q")  # of the JSON line in the spill file; -1: not written
        self._lengths = array("I")
        self._sources = array("I")
        self._first: np.ndarray | None = None
        self._picked: np.ndarray | None = None

    def __enter__(self) -> CandidateStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete the spill file."""
        self._spill.close()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, sid: str, source: int, key: float | None, record: dict | None) -> None:
        """One snippet, in reading order: `sid` its 16-hex-digit content id, `source` its source's
        index, `key` its sampling key (None: its source has weight 0, it only takes part in dedup),
        `record` the JSON object written for it (spilled to disk only when it has a key)."""
        self._ids.append(int(sid, 16))
        self._sources.append(source)
        if key is None or record is None:
            self._keys.append(math.nan)
            self._offsets.append(-1)
            self._lengths.append(0)
            return
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        self._keys.append(key)
        self._offsets.append(self._size)
        self._lengths.append(len(data))
        self._spill.write(data)
        self._size += len(data)

    def first_occurrences(self) -> np.ndarray:
        """A boolean mask over the snippets: True where the id appears for the first time."""
        if self._first is None:
            ids = np.frombuffer(self._ids, dtype=np.uint64) if len(self) else np.zeros(0, np.uint64)
            _, first = np.unique(ids, return_index=True)  # the index of each id's first occurrence
            self._first = np.zeros(len(ids), dtype=bool)
            self._first[first] = True
        return self._first

    def pick(self, max_snippets: int) -> np.ndarray:
        """The indices of the written snippets in output order: unique ids with a key, by key
        descending then id ascending, the first `max_snippets` (0 = all)."""
        keys = np.frombuffer(self._keys, dtype=np.float64) if len(self) else np.zeros(0)
        ids = np.frombuffer(self._ids, dtype=np.uint64) if len(self) else np.zeros(0, np.uint64)
        candidates = np.flatnonzero(self.first_occurrences() & ~np.isnan(keys))
        # lexsort: the last key is the primary one; 16 lowercase hex digits order as their integers
        order = candidates[np.lexsort((ids[candidates], -keys[candidates]))]
        self._picked = order[:max_snippets] if max_snippets else order
        return self._picked

    def counts(self, num_sources: int) -> dict[str, np.ndarray]:
        """Per source index: `snippets` (first occurrences), `duplicates`, and `kept` (in the last `pick`)."""
        sources = np.frombuffer(self._sources, dtype=np.uint32) if len(self) else np.zeros(0, np.uint32)
        first = self.first_occurrences()
        picked = self._picked if self._picked is not None else np.zeros(0, np.int64)
        return {"snippets": np.bincount(sources[first], minlength=num_sources),
                "duplicates": np.bincount(sources[~first], minlength=num_sources),
                "kept": np.bincount(sources[picked], minlength=num_sources)}

    def write(self, path: str | os.PathLike, indices: np.ndarray) -> int:
        """Write the spilled lines of `indices`, in that order, to `path` (atomically); how many."""
        self._spill.flush()
        with atomic_write(path) as out:
            for i in indices.tolist():
                self._spill.seek(self._offsets[i])
                out.write(self._spill.read(self._lengths[i]).decode("utf-8"))
        return len(indices)
