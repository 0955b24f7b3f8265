"""One reader per on-disk format: random access to the valid records of one file (or one TFDS split).

Each reader validates every record once when it is built (so bad data fails before anything is compiled),
or, for jsonl, takes the byte offsets a `data.index` pass found once (`JsonlFile.from_offsets`), and keeps
only what random access needs: byte offsets for jsonl, valid row numbers for the others. Open file
handles are per process and reopened after pickling (grain worker processes get a pickled copy).
"""

from __future__ import annotations

import array
import collections
import os
import threading
from typing import Any, Iterable

import numpy as np

from jz3_jax.errors import DataError
from jz3_jax.records.formats import Row, iter_rows, open_parquet, open_tfds, source_rows
from jz3_jax.records.jsonl import BadRecords, parse_line, read_lines

Record = dict[str, str]


def record_of(obj: Any, fields: tuple[str, str]) -> tuple[Record | None, str | None]:
    """(record, None) for a decoded object with string `fields` (input, output), else (None, reason)."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    record = {}
    for key, field in zip(("input", "output"), fields):
        if field not in obj:
            return None, f"missing field {field!r}"
        value = obj[field]
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return None, f"field {field!r} is not valid UTF-8"
        if not isinstance(value, str):
            return None, f"field {field!r} is {type(value).__name__}, not a string"
        record[key] = value
    return record, None


def parse_record(data: bytes, fields: tuple[str, str]) -> tuple[Record | None, str | None]:
    """(record, None) for one JSON line holding a valid record, else (None, reason)."""
    obj, reason = parse_line(data)
    return (None, reason) if reason else record_of(obj, fields)


class RecordFile:
    """Base for the readers: `len`, `read(i)` of the i-th valid record, `path`, `skipped`."""

    path: str

    def __init__(self, path: str, fields: tuple[str, str], bad_records: str) -> None:
        self.path = path
        self._fields = fields
        self._bad = BadRecords(bad_records, key="data.bad_records", error=DataError)
        self._lock = threading.Lock()

    @property
    def skipped(self) -> int:
        """Malformed records skipped while indexing (bad_records="skip")."""
        return self._bad.skipped

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> Record:
        """The `index`-th valid record as {"input": str, "output": str}."""
        raise NotImplementedError

    def _record(self, obj: Any) -> tuple[Record | None, str | None]:
        """(record, None) for a valid decoded object, else (None, reason)."""
        return record_of(obj, self._fields)

    def _parse(self, data: bytes) -> tuple[Record | None, str | None]:
        return parse_record(data, self._fields)

    def _valid_rows(self, rows: Iterable[Row]) -> np.ndarray:
        """The indices of the valid records among `rows`; each invalid one goes to the bad-record policy."""
        valid = array.array("q")
        for row in rows:
            _, reason = self._record(row.value)
            if reason:
                self._bad(row.where, reason)
            else:
                valid.append(row.index)
        return np.frombuffer(valid, dtype=np.int64) if valid else np.zeros(0, np.int64)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_lock"] = None
        state.update({key: None for key in self._handles()})
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _handles(self) -> tuple[str, ...]:
        """Attribute names of per-process handles, dropped when pickled."""
        return ()


class JsonlFile(RecordFile):
    """A JSON-lines file; blank lines are not records. Holds two int64 offsets per record."""

    def __init__(self, path: str, fields: tuple[str, str], bad_records: str) -> None:
        super().__init__(path, fields, bad_records)
        starts, ends = array.array("q"), array.array("q")
        for line in read_lines(path, self._bad, validate=lambda record: self._record(record)[1]):
            starts.append(line.start)
            ends.append(line.end)
        self._starts = np.frombuffer(starts, dtype=np.int64) if starts else np.zeros(0, np.int64)
        self._ends = np.frombuffer(ends, dtype=np.int64) if ends else np.zeros(0, np.int64)
        self._fd: int | None = None

    @classmethod
    def from_offsets(cls, path: str, fields: tuple[str, str], bad_records: str, starts: np.ndarray,
                     ends: np.ndarray, skipped: int = 0) -> JsonlFile:
        """A reader over the records at byte ranges [starts, ends) found earlier (by `data.index`): the
        file is not read here; `skipped` malformed lines were found when it was indexed."""
        reader = cls.__new__(cls)
        RecordFile.__init__(reader, path, fields, bad_records)
        reader._bad.skipped = int(skipped)
        reader._starts, reader._ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        reader._fd = None
        return reader

    def __len__(self) -> int:
        return len(self._starts)

    def read(self, index: int) -> Record:
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
        start, end = int(self._starts[index]), int(self._ends[index])
        # pread is positional, so grain's reader threads can share one descriptor.
        record, reason = self._parse(os.pread(self._fd, end - start, start))
        if reason:
            raise DataError(f"{self.path}: the line at byte {start} changed since it was indexed: {reason}")
        return record

    def _handles(self) -> tuple[str, ...]:
        return ("_fd",)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class ParquetFile(RecordFile):
    """A Parquet file with string columns. Rows with a null field are bad records.

    Random access decodes a whole row group per cache miss (a few are cached): shuffled reads of a large
    Parquet file are slow; convert big corpora to ArrayRecord.
    """

    _CACHED_GROUPS = 4

    def __init__(self, path: str, fields: tuple[str, str], bad_records: str) -> None:
        super().__init__(path, fields, bad_records)
        import pyarrow as pa

        handle = self._open()
        schema = handle.schema_arrow
        for field in fields:
            if field not in schema.names:
                raise DataError(f"{path}: no column {field!r} (columns: {', '.join(schema.names)})")
            kind = schema.field(field).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
                raise DataError(f"{path}: column {field!r} has type {kind}, not string")
        meta = handle.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        valid: list[np.ndarray] = []
        for group, size in enumerate(sizes):
            if not self._may_have_nulls(meta.row_group(group)):
                valid.append(np.arange(size) + self._group_starts[group])
                continue
            table = handle.read_row_group(group, columns=list(fields))
            ok = np.ones(size, dtype=bool)
            for field in fields:
                ok &= ~table.column(field).is_null().to_numpy(zero_copy_only=False)
            for row in np.flatnonzero(~ok):
                self._bad(f"{path}: row index {int(row + self._group_starts[group])}", "null field")
            valid.append(np.flatnonzero(ok) + self._group_starts[group])
        self._rows = np.concatenate(valid).astype(np.int64) if valid else np.zeros(0, np.int64)
        self._cache: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def _open(self):
        self._file = open_parquet(self.path, DataError)
        return self._file

    def _may_have_nulls(self, group_meta) -> bool:
        columns = {group_meta.column(j).path_in_schema: group_meta.column(j) for j in range(group_meta.num_columns)}
        for field in self._fields:
            stats = columns[field].statistics
            if stats is None or not stats.has_null_count or stats.null_count:
                return True
        return False

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, index: int) -> Record:
        row = int(self._rows[index])
        group = int(np.searchsorted(self._group_starts, row, side="right")) - 1
        with self._lock:
            table = self._cache.get(group)
            if table is None:
                handle = self._file if getattr(self, "_file", None) is not None else self._open()
                table = handle.read_row_group(group, columns=list(self._fields))
                self._cache[group] = table
                while len(self._cache) > self._CACHED_GROUPS:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(group)
        offset = row - int(self._group_starts[group])
        return {key: table.column(field)[offset].as_py() for key, field in zip(("input", "output"), self._fields)}

    def _handles(self) -> tuple[str, ...]:
        return ("_file",)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_cache"] = collections.OrderedDict()
        return state


class _RowsFile(RecordFile):
    """A reader over a random-access source (`source[row]`), opened lazily per process, that keeps the
    numbers of its valid rows. Subclasses give `_open` (the source), `_decode` and `_where`."""

    _rows: np.ndarray
    _source: Any = None

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, index: int) -> Record:
        if self._source is None:
            with self._lock:
                if self._source is None:
                    self._source = self._open()
        row = int(self._rows[index])
        record, reason = self._decode(self._source[row])
        if reason:
            raise DataError(f"{self._where(row)}: {reason}")
        return record

    def _open(self) -> Any:
        raise NotImplementedError

    def _decode(self, value: Any) -> tuple[Record | None, str | None]:
        raise NotImplementedError

    def _where(self, row: int) -> str:
        raise NotImplementedError

    def _handles(self) -> tuple[str, ...]:
        return ("_source",)


class ArrayRecordFile(_RowsFile):
    """An ArrayRecord file whose records are JSON-encoded objects (utf-8 bytes).

    Random access reads a whole chunk of `group_size` records: write with `group_size:1` for shuffled reads.
    """

    def __init__(self, path: str, fields: tuple[str, str], bad_records: str) -> None:
        super().__init__(path, fields, bad_records)
        self._rows = self._valid_rows(iter_rows(path, "array_record", self._bad))

    def _open(self) -> Any:
        import grain

        return grain.sources.ArrayRecordDataSource([self.path])

    def _decode(self, value: Any) -> tuple[Record | None, str | None]:
        return self._parse(value)

    def _where(self, row: int) -> str:
        return f"{self.path}: record {row} changed since it was indexed"


class TfdsSplit(_RowsFile):
    """One split of a TFDS builder directory written with file_format="array_record".

    Read through `tfds.builder_from_directory(path).as_data_source(split)`, which needs no TensorFlow; TFDS
    returns text features as bytes.
    """

    def __init__(self, path: str, split: str, fields: tuple[str, str], bad_records: str) -> None:
        super().__init__(path, fields, bad_records)
        self.split = split
        self._source = self._open()  # the split and features are checked first
        self._rows = self._valid_rows(source_rows(self._source, f"{path}: split {split!r}"))

    def _open(self) -> Any:
        return open_tfds(self.path, self.split, DataError, self._fields)

    def _decode(self, value: Any) -> tuple[Record | None, str | None]:
        return self._record(value)

    def _where(self, row: int) -> str:
        return f"{self.path}: split {self.split!r} record {row}"
