"""A resumable, multi-writer feature store: one memory-mapped [N, k] float32 file plus done-markers.

Layout of a store directory:
    meta.json          {"count": N, "dim": k, "fingerprint": ...}
    features.f32       N * k float32, row i = example i (created sparse, filled as rows are computed)
    done-pP.u8         N bytes written by process P only: 1 where that process stored row i

A row is written and flushed before its marker is set and flushed, so a job killed at any moment
(SIGKILL included) leaves every marked row complete; an unmarked row is recomputed on the rerun and
overwritten with the same values. Each process writes only its own marker file and its own rows,
so processes never write the same bytes; row i is done if any marker file says so (which also lets
a job resume with another number of processes). With k a multiple of 1024 every row is whole
4 KiB pages. Needs a file system with shared mmap semantics (local disk, or NFS/Filestore on pods).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jz3_jax.errors import UserError
from jz3_jax.runtime.paths import atomic_write


class StoreMismatch(UserError):
    """An existing feature store was built for other examples or another projection."""


def _sized_file(path: Path, nbytes: int) -> None:
    """Create `path` (if absent) and make it exactly `nbytes` long (sparse); safe to race."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size != nbytes:
            os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


class FeatureStore:
    """Open (or create) the store at `directory` for `count` rows of `dim` features, as `process`."""

    def __init__(self, directory: str | os.PathLike, count: int, dim: int, fingerprint: dict, process: int = 0):
        self.dir = Path(directory)
        self.count, self.dim, self.process = count, dim, process
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"count": count, "dim": dim, "fingerprint": fingerprint}
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != meta:
                raise StoreMismatch(f"feature store {self.dir} holds {found}, this run needs {meta}: "
                                    "remove it or use another run directory")
        else:
            with atomic_write(meta_path) as f:
                json.dump(meta, f)
        _sized_file(self.dir / "features.f32", max(count * dim * 4, 1))
        _sized_file(self._done_path(process), max(count, 1))
        self._features = np.memmap(self.dir / "features.f32", np.float32, "r+", shape=(count, dim)) if count else None
        self._done = np.memmap(self._done_path(process), np.uint8, "r+", shape=(count,)) if count else None

    def _done_path(self, process: int) -> Path:
        return self.dir / f"done-p{process}.u8"

    def done(self) -> np.ndarray:
        """Bool [N]: rows stored by any process (read fresh from disk)."""
        mask = np.zeros(self.count, bool)
        for path in sorted(self.dir.glob("done-p*.u8")):
            marks = np.fromfile(path, np.uint8)
            if marks.size == self.count:
                mask |= marks.astype(bool)
        return mask

    def write(self, indices: np.ndarray, rows: np.ndarray) -> None:
        """Store `rows` [n, k] at `indices`, then mark them done (each step flushed to disk)."""
        if len(indices) == 0:
            return
        self._features[indices] = rows.astype(np.float32)
        self._features.flush()
        self._done[indices] = 1
        self._done.flush()

    def read(self) -> np.ndarray:
        """All rows [N, k] (a read-only memory map); every row must be done."""
        missing = np.flatnonzero(~self.done())
        if missing.size:
            raise RuntimeError(f"feature store {self.dir}: {missing.size} rows missing (first {missing[:5].tolist()})")
        return np.memmap(self.dir / "features.f32", np.float32, "r", shape=(self.count, self.dim))
