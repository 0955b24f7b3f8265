"""The one file-format dispatcher: records of jsonl, json, Parquet, ArrayRecord files and TFDS splits.

    kind = format_of("train.parquet")                         # "parquet" (None: not a record file)
    for row in iter_rows(path, kind, bad):                    # Row(where, index, value)
        ...

Every format yields decoded records (dicts) with the place they came from (`where`: `file:line` for
JSON lines, `file: row index N` for Parquet, `file: record N` for ArrayRecord, `dir: split 'S' record N`
for TFDS), and sends a record that cannot be decoded to the bad-record policy (`jsonl.BadRecords`).
`corpus` streams documents from it; `data` validates its random-access readers with it. The heavy
libraries (pyarrow, array_record, tensorflow_datasets) are imported only when their format is read.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator, NamedTuple

from jz3_jax.errors import RecordError, UserError
from jz3_jax.records.jsonl import BadRecords, parse_line, read_lines

FORMATS = ("jsonl", "json", "parquet", "array_record", "tfds")
# ArrayRecord shards as TFDS and others name them: name.array_record-00000-of-00008.
_SUFFIXES = (("jsonl", re.compile(r"\.jsonl$", re.I)), ("json", re.compile(r"\.json$", re.I)),
             ("parquet", re.compile(r"\.parquet$", re.I)),
             ("array_record", re.compile(r"\.array_record(-\d+-of-\d+)?$", re.I)))
TFDS_INFO = "dataset_info.json"  # what marks a TFDS builder directory
CHUNK = 4096  # records per sequential read of ArrayRecord / TFDS


class Row(NamedTuple):
    """One decoded record and where it stands in its file (`index`: line number, row or record index)."""

    where: str
    index: int
    value: Any
    key: str | None = None  # the record's key in a JSON file holding an object of records


def format_of(name: str) -> str | None:
    """The record format of file `name` from its suffix, or None when it is not a record file."""
    for kind, pattern in _SUFFIXES:
        if pattern.search(name):
            return kind
    return None


def is_tfds_dir(path: str) -> bool:
    """Whether `path` is a TFDS builder directory (it holds dataset_info.json)."""
    return os.path.isfile(os.path.join(path, TFDS_INFO))


def iter_rows(path: str, fmt: str, bad: BadRecords | None = None, *, split: str = "train") -> Iterator[Row]:
    """The records of one file (or TFDS builder directory `path`, its `split`) of format `fmt`, in order.

    A record that is not a JSON object (jsonl, json, ArrayRecord) goes to `bad`; a file that cannot
    be opened raises `bad.error`.
    """
    bad = bad if bad is not None else BadRecords()
    readers = {"jsonl": _jsonl_rows, "json": _json_rows, "parquet": _parquet_rows,
               "array_record": _array_record_rows}
    if fmt == "tfds":
        yield from _tfds_rows(path, split, bad)
    elif fmt in readers:
        yield from readers[fmt](path, bad)
    else:
        raise bad.error(f"unknown record format {fmt!r} for {path}; expected one of {', '.join(FORMATS)}")


def _jsonl_rows(path: str, bad: BadRecords) -> Iterator[Row]:
    for line in read_lines(path, bad):
        yield Row(line.where, line.number, line.record)


def _json_rows(path: str, bad: BadRecords) -> Iterator[Row]:
    """A JSON file holding a list of records, an object of records keyed by id, one record, or JSON lines."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        yield from _jsonl_rows(path, bad)  # e.g. JSON lines saved as .json
        return
    except OSError as error:
        raise bad.error(f"cannot read {path}: {error.strerror or error}") from error
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        items = [(str(key), value) for key, value in data.items()]
    else:
        items = [(None, value) for value in (data if isinstance(data, list) else [data])]
    for index, (key, value) in enumerate(items, 1):
        where = f"{path}: item {index}"
        if isinstance(value, dict):
            yield Row(where, index, value, key)
        else:
            bad(where, f"expected a JSON object, got {type(value).__name__}")


def open_parquet(path: str, error: type[UserError] = RecordError):
    """A `pyarrow.parquet.ParquetFile`; `error` naming the file when it is not a readable one."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as cause:  # pyarrow raises several types for a bad file
        raise error(f"{path}: not a readable Parquet file: {cause}") from cause


def _parquet_rows(path: str, bad: BadRecords) -> Iterator[Row]:
    index = 0
    for batch in open_parquet(path, bad.error).iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            yield Row(f"{path}: row index {index}", index, value)
            index += 1


def _array_record_rows(path: str, bad: BadRecords) -> Iterator[Row]:
    """ArrayRecord records holding JSON-encoded objects (utf-8 bytes)."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(path)
        total = reader.num_records()
    except (RuntimeError, OSError, ValueError) as cause:
        raise bad.error(f"{path}: not a readable ArrayRecord file: {cause}") from cause
    try:
        for start in range(0, total, CHUNK):
            for index, data in enumerate(reader.read(start, min(start + CHUNK, total)), start):
                record, reason = parse_line(data)
                if reason:
                    bad(f"{path}: record {index}", reason)
                else:
                    yield Row(f"{path}: record {index}", index, record)
    finally:
        reader.close()


def open_tfds(path: str, split: str, error: type[UserError] = RecordError, fields: tuple[str, ...] = ()):
    """The random-access data source of `split` of the TFDS builder directory `path` (array_record files,
    read without TensorFlow); `error` names what is missing (the package, the split, a feature in `fields`)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as cause:
        raise error(f"{path}: reading a TFDS directory needs tensorflow-datasets ({cause})") from cause
    try:
        builder = tfds.builder_from_directory(path)
    except Exception as cause:  # TFDS raises its own types for a missing or bad dataset_info.json
        raise error(f"{path}: not a TFDS builder directory: {cause}") from cause
    splits = list(builder.info.splits.keys())
    if split not in splits:
        raise error(f"{path}: no split {split!r} (splits: {', '.join(splits)})")
    features = builder.info.features
    for field in fields:
        if features is not None and field not in features:
            raise error(f"{path}: no feature {field!r} (features: {', '.join(features.keys())})")
    try:
        return builder.as_data_source(split)
    except Exception as cause:  # e.g. written as tfrecord, which needs TensorFlow
        raise error(f"{path}: cannot read split {split!r} without TensorFlow (write the dataset with "
                    f"file_format='array_record'): {cause}") from cause


def _tfds_rows(path: str, split: str, bad: BadRecords) -> Iterator[Row]:
    yield from source_rows(open_tfds(path, split, bad.error), f"{path}: split {split!r}")


def source_rows(source, where: str) -> Iterator[Row]:
    """The records of a random-access data source (`len`, `__getitems__`, e.g. a TFDS split), read in
    chunks; `where` names the source in each row's place."""
    total = len(source)
    for start in range(0, total, CHUNK):
        indices = list(range(start, min(start + CHUNK, total)))
        for index, value in zip(indices, source.__getitems__(indices)):
            yield Row(f"{where} record {index}", index, value)
