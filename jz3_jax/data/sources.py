"""`read_records`: one random-access `RecordSource` over jsonl / Parquet / ArrayRecord files or a TFDS split."""

from __future__ import annotations

import bisect
import glob
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from jz3_jax.errors import DataError
from jz3_jax.records.formats import format_of, is_tfds_dir
from jz3_jax.records.jsonl import BadRecords
from .readers import ArrayRecordFile, JsonlFile, ParquetFile, Record, RecordFile, TfdsSplit

if TYPE_CHECKING:
    from .index import TokenIndex

FORMATS = ("auto", "jsonl", "parquet", "array_record", "tfds")
_FILE_READERS = {"jsonl": JsonlFile, "parquet": ParquetFile, "array_record": ArrayRecordFile}


class RecordSource(Sequence):
    """Random access (`len`, `[i]`) over validated {"input": str, "output": str} records of one or more files.

    Attributes:
        path: the path the source was read from (for messages).
        skipped: records dropped as malformed (bad_records="skip"); 0 under "error".
        files: the per-file readers.
    """

    def __init__(self, path: str, files: list[RecordFile], indices: np.ndarray | None = None,
                 counts: np.ndarray | None = None) -> None:
        self.path = path
        self.files = files
        self._ends = list(np.cumsum([len(f) for f in files]).tolist())
        self._indices = indices
        self._counts = counts  # id counts of all the files' records (from a `TokenIndex`), or None

    @property
    def id_counts(self) -> np.ndarray | None:
        """How many ids `encode_example` makes of each record (before truncation), when the source was
        read through a `TokenIndex`; else None."""
        if self._counts is None:
            return None
        return self._counts[self._indices] if self._indices is not None else self._counts

    @property
    def skipped(self) -> int:
        """Malformed records skipped while reading."""
        return sum(f.skipped for f in self.files)

    def __len__(self) -> int:
        return len(self._indices) if self._indices is not None else (self._ends[-1] if self._ends else 0)

    def __getitem__(self, index: int) -> Record:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records of {self.path}")
        index %= len(self)
        if self._indices is not None:
            index = int(self._indices[index])
        file_index = bisect.bisect_right(self._ends, index)
        start = self._ends[file_index - 1] if file_index else 0
        return self.files[file_index].read(index - start)

    def select(self, indices: Sequence[int] | np.ndarray) -> RecordSource:
        """A view of the records at `indices` (positions in this source)."""
        indices = np.asarray(indices, dtype=np.int64)
        base = self._indices[indices] if self._indices is not None else indices
        return RecordSource(self.path, self.files, base, self._counts)

    def __repr__(self) -> str:
        return f"RecordSource({self.path!r}, records={len(self)}, skipped={self.skipped})"


def read_records(path: str, fmt: str = "auto", split: str = "train", input_field: str = "input",
                 output_field: str = "output", bad_records: str = "error", index: TokenIndex | None = None
                 ) -> RecordSource:
    """Open the records at `path` for random access.

    `path` is a .jsonl / .parquet / .array_record file (ArrayRecord records hold JSON-encoded objects), a
    directory or glob of such files (read in sorted order), or a TFDS builder directory (fmt="tfds", or
    "auto" when it holds dataset_info.json) whose `split` is read. `input_field`/`output_field` name the
    two string fields. Every record is validated once here: a malformed one raises DataError naming the file
    and line (jsonl, 1-based) or record/row index, unless `bad_records="skip"`, which drops and counts it
    (`RecordSource.skipped`). No records at all raises DataError.

    With `index` (a `TokenIndex` for these fields), jsonl files are not read here: their byte offsets
    and every record's id count come from the index (built once, where missing), and
    `RecordSource.id_counts` holds the counts.
    """
    listed = list_files(path, fmt, bad_records)
    fields = (input_field, output_field)
    if index is not None:
        if index.fields != fields:
            raise DataError(f"the index of {path} is for fields {index.fields}, not {fields}")
        opened = [index.open(name, kind, split=split, bad_records=bad_records) for name, kind in listed]
        files: list[RecordFile] = [reader for reader, _ in opened]
        counts = np.concatenate([c for _, c in opened]) if opened else np.zeros(0, np.int32)
    elif listed[0][1] == "tfds":
        files, counts = [TfdsSplit(path, split, fields, bad_records)], None
    else:
        files, counts = [_FILE_READERS[kind](name, fields, bad_records) for name, kind in listed], None
    source = RecordSource(path, files, counts=counts)
    if len(source) == 0:
        detail = f": all {source.skipped} records were malformed and skipped" if source.skipped else ""
        raise DataError(f"no records in {path}{detail}")
    return source


def list_files(path: str, fmt: str = "auto", bad_records: str = "error") -> list[tuple[str, str]]:
    """The (file, format) pairs `read_records` reads for `path`: [(path, "tfds")] for a TFDS builder
    directory. Raises DataError for an unknown format or policy, or when nothing is there."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r} for {path}; expected one of {', '.join(FORMATS)}")
    BadRecords(bad_records, key="data.bad_records", error=DataError)  # checks the policy's name
    if not path:
        raise DataError("no data path given")
    if fmt == "tfds" or (fmt == "auto" and is_tfds_dir(path)):
        if not os.path.isdir(path):
            raise DataError(f"TFDS builder directory {path} does not exist")
        return [(path, "tfds")]
    return _list_files(path, fmt)


def hold_out(source: RecordSource, rows: int, seed: int = 0) -> tuple[RecordSource, RecordSource]:
    """Split `source` into (train, held-out) with `rows` records, chosen at random from `seed`, held out."""
    if not 0 < rows < len(source):
        raise DataError(f"cannot hold out {rows} of the {len(source)} records of {source.path}")
    order = np.random.default_rng(seed).permutation(len(source))
    return source.select(np.sort(order[rows:])), source.select(np.sort(order[:rows]))


def _list_files(path: str, fmt: str) -> list[tuple[str, str]]:
    """(file, format) pairs for a file, directory or glob."""
    if os.path.isdir(path):
        names = [os.path.join(path, name) for name in sorted(os.listdir(path))]
        found = [(name, kind) for name in names if os.path.isfile(name) and (kind := _kind(name, fmt))]
        if not found:
            wanted = fmt if fmt != "auto" else "jsonl, parquet or array_record"
            raise DataError(f"no {wanted} files in directory {path}")
        return found
    if os.path.isfile(path):
        kind = fmt if fmt != "auto" else _kind(path, fmt)
        if not kind:
            raise DataError(f"cannot tell the format of {path} from its name; set data.format "
                            f"(one of {', '.join(FORMATS[1:])})")
        return [(path, kind)]
    if glob.has_magic(path):
        names = sorted(name for name in glob.glob(path) if os.path.isfile(name))
        found = [(name, fmt if fmt != "auto" else _kind(name, fmt)) for name in names]
        if not names or not all(kind for _, kind in found):
            unknown = [name for name, kind in found if not kind]
            raise DataError(f"no data files match {path}" if not names else
                            f"cannot tell the format of {unknown[0]} (matched by {path}); set data.format")
        return found
    raise DataError(f"no such data file or directory: {path}")


def _kind(name: str, fmt: str) -> str | None:
    """The format of file `name` by its suffix (None if unknown, or not `fmt` when fmt is not "auto")."""
    kind = format_of(name)
    return kind if kind in _FILE_READERS and fmt in ("auto", kind) else None
