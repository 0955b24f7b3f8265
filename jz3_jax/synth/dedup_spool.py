"""On-disk spools of deduplication features: fixed-width columns written by each process, read by all.

Each process of a `filter` run writes one spool directory with a row per problem that survived its
first checks (in record order): `exact.u64` (the 128-bit exact key, two uint64), `band_BB.u64` (one
file per LSH band: that band's uint64 key), `sketch.u8` (the 8-bit MinHash sketch), `index.u64`
(start and count of the problem's shingles in `shingles.u32`) and `shingles.u32` (the sorted shingle
hashes). The spools of all processes, in process order, form one table indexed by the global record
number of the survivors (`Spools`).

Nothing is held in memory beyond the chunk being written or read: columns are read in chunks of
rows (`Spools.chunks`), and rows picked by number are read with `os.pread`, neighbouring rows in one
call (`Spools.rows`, `Spools.shingles`), so the page cache, not the process, holds the files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from jz3_jax.synth.dedup import concat_ranges

_GAP_BYTES = 1 << 10  # rows closer than this are read in one call (and the bytes between discarded)
META = "spool.json"


def band_name(band: int) -> str:
    """The file of one band's keys."""
    return f"band_{band:02d}.u64"


class SpoolWriter:
    """Appends feature rows to one spool directory, `chunk` rows at a time."""

    def __init__(self, directory: Path, bands: int, chunk: int = 4096) -> None:
        self.directory, self.bands, self.chunk = Path(directory), bands, chunk
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._shingle_end = 0
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, exact: np.ndarray, shingles: np.ndarray, band_keys: np.ndarray, sketch: np.ndarray) -> None:
        """One survivor's features (exact key: 2 uint64; shingles: sorted uint32; keys; sketch)."""
        self._buffer.append((exact, shingles, band_keys, sketch))
        if len(self._buffer) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        """Append the buffered rows to the files."""
        if not self._buffer:
            return
        exact, shingles, keys, sketch = zip(*self._buffer)
        counts = np.array([len(s) for s in shingles], np.uint64)
        starts = self._shingle_end + np.cumsum(counts) - counts
        self._shingle_end += int(counts.sum())
        keys = np.stack(keys)
        self._append("exact.u64", np.stack(exact))
        self._append("index.u64", np.stack([starts, counts], axis=1).astype(np.uint64))
        self._append("shingles.u32", np.concatenate(shingles).astype(np.uint32))
        self._append("sketch.u8", np.stack(sketch))
        for band in range(self.bands):
            self._append(band_name(band), np.ascontiguousarray(keys[:, band]))
        self.rows += len(self._buffer)
        self._buffer = []

    def _append(self, name: str, array: np.ndarray) -> None:
        with open(self.directory / name, "ab") as f:
            f.write(array.tobytes())


class Spools:
    """The spools of all processes as one table; global row g is row g - offset[p] of spool p."""

    def __init__(self, directories: list[Path], counts: list[int], sketch_width: int) -> None:
        self.directories = [Path(d) for d in directories]
        self.sketch_width = sketch_width
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self._fds: dict[tuple[int, str], int] = {}

    def close(self) -> None:
        """Close the files opened for row reads."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "Spools":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chunks(self, name: str, dtype: type, width: int, rows: int = 1 << 16) -> Iterator[tuple[int, np.ndarray]]:
        """(global start row, array of up to `rows` rows x `width`) over column file `name`, in order."""
        item = np.dtype(dtype).itemsize * width
        for p, directory in enumerate(self.directories):
            count = int(self.offsets[p + 1] - self.offsets[p])
            for start in range(0, count, rows):
                n = min(rows, count - start)
                data = np.fromfile(directory / name, dtype=dtype, count=n * width, offset=start * item)
                yield int(self.offsets[p]) + start, data.reshape(n, width)

    def _fd(self, p: int, name: str) -> int:
        key = (p, name)
        if key not in self._fds:
            self._fds[key] = os.open(self.directories[p] / name, os.O_RDONLY)
        return self._fds[key]

    def _split(self, idx: np.ndarray) -> Iterator[tuple[int, np.ndarray, slice]]:
        """(spool, local rows, slice of `idx`) for sorted global rows `idx`."""
        bounds = np.searchsorted(idx, self.offsets)
        for p in range(len(self.directories)):
            part = slice(int(bounds[p]), int(bounds[p + 1]))
            if part.stop > part.start:
                yield p, idx[part] - self.offsets[p], part

    def rows(self, name: str, dtype: type, width: int, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (sorted, unique global row numbers) of column file `name`: (len(idx), width)."""
        item = np.dtype(dtype).itemsize * width
        out = np.empty((len(idx), width), dtype)
        for p, local, part in self._split(idx):
            data = _read_ranges(self._fd(p, name), local * item, np.full(len(local), item, np.int64))
            out[part] = data.view(dtype).reshape(-1, width)
        return out

    def shingles(self, idx: np.ndarray, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flat uint32, offsets, counts) of the shingle sets of rows `idx` (sorted, unique); `index`:
        their rows of `index.u64` when already read."""
        index = (self.rows("index.u64", np.uint64, 2, idx) if index is None else index).astype(np.int64)
        counts = index[:, 1]
        pieces = []
        for p, _, part in self._split(idx):
            pieces.append(_read_ranges(self._fd(p, "shingles.u32"), index[part, 0] * 4, counts[part] * 4))
        flat = np.concatenate(pieces).view(np.uint32) if pieces else np.zeros(0, np.uint32)
        return flat, np.cumsum(counts) - counts, counts


def _read_ranges(fd: int, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes of ranges (sorted by start, not overlapping) concatenated, as uint8. Ranges less than
    `_GAP_BYTES` apart are read with one `pread` (so the bytes read exceed the bytes asked for by at
    most `_GAP_BYTES` a range)."""
    if len(starts) == 0:
        return np.zeros(0, np.uint8)
    ends = starts + lengths
    cut = np.flatnonzero(starts[1:] - ends[:-1] > _GAP_BYTES) + 1
    firsts, stops = np.concatenate([[0], cut]), np.concatenate([cut, [len(starts)]])
    run_begin, run_end = starts[firsts], ends[stops - 1]
    pieces = []
    for begin, end in zip(run_begin.tolist(), run_end.tolist()):
        data = os.pread(fd, end - begin, begin)
        if len(data) != end - begin:
            raise OSError(f"short read from a filter spool file ({len(data)} of {end - begin} bytes)")
        pieces.append(data)
    buffer = np.frombuffer(b"".join(pieces), np.uint8)
    run_base = np.cumsum(run_end - run_begin) - (run_end - run_begin)  # where each run lies in `buffer`
    run = np.repeat(np.arange(len(firsts)), stops - firsts)
    return buffer[concat_ranges(run_base[run] + starts - run_begin[run], lengths)]
