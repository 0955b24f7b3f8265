"""One reader per on-disk format: random access to the valid records of one file (or one TFDS split).

Each reader validates every record once when it is built (so bad data fails before anything is compiled)
and keeps only what random access needs: byte offsets for jsonl, valid row numbers for the others. Open file
handles are per process and reopened after pickling (grain worker processes get a pickled copy).
"""

from __future__ import annotations

import array
import collections
import json
import os
import threading
from typing import Any

import numpy as np

from jz3_jax.errors import DataError

Record = dict[str, str]
_CHUNK = 4096  # records per sequential read while validating


class RecordFile:
    """Base for the readers: `len`, `read(i)` of the i-th valid record, `path`, `skipped`."""

    path: str
    skipped: int = 0

    def __init__(self, path: str, fields: tuple[str, str], bad_records: str) -> None:
        self.path = path
        self._fields = fields
        self._skip = bad_records == "skip"
        self._lock = threading.Lock()

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> Record:
        """The `index`-th valid record as {"input": str, "output": str}."""
        raise NotImplementedError

    def _bad(self, where: str, reason: str) -> None:
        """Count a bad record under the skip policy, else raise naming the file and `where`."""
        if not self._skip:
            raise DataError(f"{self.path}: {where}: {reason} (set data.bad_records=skip to skip such records)")
        self.skipped += 1

    def _record(self, obj: Any) -> tuple[Record | None, str | None]:
        """(record, None) for a valid decoded object, else (None, reason)."""
        if not isinstance(obj, dict):
            return None, f"expected a JSON object, got {type(obj).__name__}"
        record = {}
        for key, field in zip(("input", "output"), self._fields):
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

    def _parse(self, data: bytes) -> tuple[Record | None, str | None]:
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return None, f"invalid JSON ({error})"
        return self._record(obj)

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
        offset = 0
        with _open(path, "rb") as handle:
            for line_number, line in enumerate(handle, 1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                _, reason = self._parse(line)
                if reason:
                    self._bad(f"line {line_number}", reason)
                    continue
                starts.append(start)
                ends.append(offset)
        self._starts = np.frombuffer(starts, dtype=np.int64) if starts else np.zeros(0, np.int64)
        self._ends = np.frombuffer(ends, dtype=np.int64) if ends else np.zeros(0, np.int64)
        self._fd: int | None = None

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
                self._bad(f"row index {int(row + self._group_starts[group])}", "null field")
            valid.append(np.flatnonzero(ok) + self._group_starts[group])
        self._rows = np.concatenate(valid).astype(np.int64) if valid else np.zeros(0, np.int64)
        self._cache: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def _open(self):
        import pyarrow.parquet as pq

        try:
            self._file = pq.ParquetFile(self.path)
        except Exception as error:  # pyarrow raises several types for a bad file
            raise DataError(f"{self.path}: not a readable Parquet file: {error}") from error
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


class ArrayRecordFile(RecordFile):
    """An ArrayRecord file whose records are JSON-encoded objects (utf-8 bytes).

    Random access reads a whole chunk of `group_size` records: write with `group_size:1` for shuffled reads.
    """

    def __init__(self, path: str, fields: tuple[str, str], bad_records: str) -> None:
        super().__init__(path, fields, bad_records)
        from array_record.python.array_record_module import ArrayRecordReader

        try:
            reader = ArrayRecordReader(path)
            total = reader.num_records()
        except (RuntimeError, OSError, ValueError) as error:
            raise DataError(f"{path}: not a readable ArrayRecord file: {error}") from error
        valid = np.ones(total, dtype=bool)
        try:
            for start in range(0, total, _CHUNK):
                for offset, data in enumerate(reader.read(start, min(start + _CHUNK, total))):
                    _, reason = self._parse(data)
                    if reason:
                        self._bad(f"record {start + offset}", reason)
                        valid[start + offset] = False
        finally:
            reader.close()
        self._rows = np.flatnonzero(valid).astype(np.int64)
        self._source = None

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, index: int) -> Record:
        if self._source is None:
            import grain

            with self._lock:
                if self._source is None:
                    self._source = grain.sources.ArrayRecordDataSource([self.path])
        row = int(self._rows[index])
        record, reason = self._parse(self._source[row])
        if reason:
            raise DataError(f"{self.path}: record {row} changed since it was indexed: {reason}")
        return record

    def _handles(self) -> tuple[str, ...]:
        return ("_source",)


class TfdsSplit(RecordFile):
    """One split of a TFDS builder directory written with file_format="array_record".

    Read through `tfds.builder_from_directory(path).as_data_source(split)`, which needs no TensorFlow; TFDS
    returns text features as bytes.
    """

    def __init__(self, path: str, split: str, fields: tuple[str, str], bad_records: str) -> None:
        super().__init__(path, fields, bad_records)
        self.split = split
        source = self._open()
        total = len(source)
        valid = np.ones(total, dtype=bool)
        for start in range(0, total, _CHUNK):
            indices = list(range(start, min(start + _CHUNK, total)))
            for index, obj in zip(indices, source.__getitems__(indices)):
                _, reason = self._record(obj)
                if reason:
                    self._bad(f"split {split!r} record {index}", reason)
                    valid[index] = False
        self._rows = np.flatnonzero(valid).astype(np.int64)

    def _open(self):
        try:
            import tensorflow_datasets as tfds
        except ImportError as error:
            raise DataError(f"{self.path}: reading a TFDS directory needs tensorflow-datasets ({error})") from error
        try:
            builder = tfds.builder_from_directory(self.path)
        except Exception as error:  # TFDS raises its own types for a missing or bad dataset_info.json
            raise DataError(f"{self.path}: not a TFDS builder directory: {error}") from error
        splits = list(builder.info.splits.keys())
        if self.split not in splits:
            raise DataError(f"{self.path}: no split {self.split!r} (splits: {', '.join(splits)})")
        features = builder.info.features
        for field in self._fields:
            if features is not None and field not in features:
                raise DataError(f"{self.path}: no feature {field!r} (features: {', '.join(features.keys())})")
        try:
            self._source = builder.as_data_source(self.split)
        except Exception as error:  # e.g. written as tfrecord, which needs TensorFlow
            raise DataError(f"{self.path}: cannot read split {self.split!r} without TensorFlow (write the "
                            f"dataset with file_format='array_record'): {error}") from error
        return self._source

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, index: int) -> Record:
        if self._source is None:
            with self._lock:
                if self._source is None:
                    self._open()
        row = int(self._rows[index])
        record, reason = self._record(self._source[row])
        if reason:
            raise DataError(f"{self.path}: split {self.split!r} record {row}: {reason}")
        return record

    def _handles(self) -> tuple[str, ...]:
        return ("_source",)


def _open(path: str, mode: str):
    try:
        return open(path, mode)
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error
