"""A one-time index of training records: where each valid record lies and how many token ids it makes.

    index = TokenIndex(directory, tokenizer, fields=("input", "output"))
    index.build_share(files, split="train", bad_records="error", part=i, parts=n)  # process i's parts
    reader, counts = index.open("train.jsonl", "jsonl", split="train", bad_records="error")

A JSON-lines file is cut into `chunk_bytes` parts at line starts. A part's index holds the byte range
of each valid record, its id count (`[bos] + input + output + [eos]`, before truncation: what
`encode_example` makes of it), and the number and first of its malformed lines. Counts come from one
batched tokenizer call per 8192 texts; the byte tokenizer's are the texts' UTF-8 byte counts (what its
`encode` gives where no added token can occur; other texts are still tokenized). Each part is one
`.npz` file, written once (atomically) and reused by every later run, resume and process: opening
the data then reads no record, and a process reads only its own records (`JsonlFile.from_offsets`).
Parquet / ArrayRecord / TFDS files keep their readers (they validate when opened) and get one part
holding their id counts.

A part's name carries a key of everything its content depends on: the index version, the file's
identity (its size and a hash of sampled blocks: the first and last 64 KiB and 16 blocks between),
the split, the two field names, the tokenizer (`tokenizer_fingerprint`) and `chunk_bytes`. A changed
file, tokenizer or field gets new parts; an edit that keeps the size and misses every sampled block
is not seen (write a new file rather than editing one in place). The index does not depend on
`max_length`, packing, batch size or the number of processes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import time
import uuid
from typing import Any, NamedTuple

import numpy as np
from etils import epath

from jz3_jax.errors import DataError
from jz3_jax.records.jsonl import BadRecords, line_number
from .readers import ArrayRecordFile, JsonlFile, ParquetFile, RecordFile, TfdsSplit, parse_record

VERSION = 1
CHUNK_BYTES = 32 << 20  # bytes of a jsonl file per index part
_BATCH = 8192  # records per tokenizer call while indexing
_SAMPLE = 64 << 10
_BLOCK, _BLOCKS = 4 << 10, 16
_ROW_READERS = {"parquet": ParquetFile, "array_record": ArrayRecordFile}


class Part(NamedTuple):
    """One unit of index work: part `number` of `count` of file `path` (format `kind`)."""

    path: str
    kind: str
    number: int
    count: int
    key: str  # what the part's content depends on (a hex digest)


class TokenIndex:
    """The index parts of some record files under `directory` (local or a URL), for one tokenizer.

    Attributes:
        built: the parts this object built (0 when every part was found).
    """

    def __init__(self, directory: str | os.PathLike, tokenizer, fields: tuple[str, str] = ("input", "output"), *,
                 chunk_bytes: int = CHUNK_BYTES, logger: logging.Logger | None = None) -> None:
        self.directory = epath.Path(directory)
        self.tokenizer, self.fields, self.chunk_bytes = tokenizer, tuple(fields), int(chunk_bytes)
        self.logger = logger or logging.getLogger("jz3_jax")
        self.built = 0
        self._tokenizer_key = tokenizer_fingerprint(tokenizer)
        self._count = _counter(tokenizer)

    # --- which parts --------------------------------------------------------------------------

    def parts(self, path: str, kind: str, split: str = "train") -> list[Part]:
        """The parts of one file (a TFDS builder directory for kind "tfds")."""
        identity = directory_identity(path) if kind == "tfds" else file_identity(path)
        count = max(1, -(-identity[0] // self.chunk_bytes)) if kind == "jsonl" else 1
        key = _digest({"version": VERSION, "identity": identity, "split": split if kind == "tfds" else "",
                       "fields": self.fields, "tokenizer": self._tokenizer_key, "chunk_bytes": self.chunk_bytes})
        return [Part(path, kind, number, count, key) for number in range(count)]

    def _file(self, part: Part) -> epath.Path:
        stem = os.path.basename(os.path.normpath(part.path))
        return self.directory / f"{stem}.{part.key[:20]}" / f"part-{part.number:05d}-of-{part.count:05d}.npz"

    # --- building -----------------------------------------------------------------------------

    def build_share(self, files: list[tuple[str, str]], *, split: str, bad_records: str, part: int,
                    parts: int) -> int:
        """Build the missing parts numbered part, part + parts, ... of all `files` ((path, kind) pairs,
        parts numbered file after file); the number built. A malformed record in them raises DataError
        (naming file and line) unless `bad_records="skip"`, after its part is written."""
        todo = [p for path, kind in files for p in self.parts(path, kind, split)]
        built = 0
        for unit in todo[part::parts]:
            if not self._file(unit).exists():
                self._check(unit, self._build(unit, split, bad_records), bad_records)
                built += 1
        return built

    def _build(self, part: Part, split: str, bad_records: str) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        if part.kind == "jsonl":
            arrays = self._index_lines(part)
        else:
            reader = _open_reader(part.path, part.kind, split, self.fields, bad_records)
            batches = [range(first, min(first + _BATCH, len(reader))) for first in range(0, len(reader), _BATCH)]
            counts = np.concatenate([np.zeros(0, np.int32)] + [self._id_counts([reader.read(i) for i in rows])
                                                               for rows in batches])
            arrays = {"lengths": counts, "meta": _meta(len(counts), reader.skipped, None)}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        target = self._file(part)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(buffer.getvalue())
            tmp.replace(target)  # readers see the whole part or none
        except OSError as error:
            raise DataError(f"cannot write the data index to {self.directory}: {error.strerror or error}",
                            hint="set data.index_dir to a writable directory") from error
        self.built += 1
        seconds = time.perf_counter() - start
        records = len(arrays["lengths"])
        self.logger.info("data index: %s part %d/%d, %d records in %.1f s (%.0f records/s)", part.path,
                         part.number + 1, part.count, records, seconds, records / max(seconds, 1e-9))
        return arrays

    def _index_lines(self, part: Part) -> dict[str, np.ndarray]:
        """Byte ranges and id counts of the valid lines starting in the part's byte range."""
        fd = os.open(part.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            start = _line_start(fd, size, part.number * self.chunk_bytes)
            end = _line_start(fd, size, (part.number + 1) * self.chunk_bytes) if part.number + 1 < part.count else size
            data = os.pread(fd, end - start, start) if end > start else b""
        finally:
            os.close(fd)
        starts, ends, counts, records = [], [], [], []
        skipped, first_bad = 0, None
        offset = start
        pieces = data.split(b"\n")
        for i, piece in enumerate(pieces):
            line_start, offset = offset, offset + len(piece) + (i + 1 < len(pieces))
            if not piece.strip():
                continue
            record, reason = parse_record(piece, self.fields)
            if reason:
                skipped += 1
                if first_bad is None:  # the reason as the line reader words it (with its newline)
                    first_bad = (line_start, parse_record(piece + b"\n", self.fields)[1] or reason)
                continue
            starts.append(line_start)
            ends.append(offset)
            records.append(record)
            if len(records) == _BATCH:
                counts.append(self._id_counts(records))
                records = []
        counts.append(self._id_counts(records))
        return {"starts": np.asarray(starts, np.int64), "ends": np.asarray(ends, np.int64),
                "lengths": np.concatenate(counts).astype(np.int32), "meta": _meta(len(starts), skipped, first_bad)}

    def _id_counts(self, records: list[dict]) -> np.ndarray:
        """How many ids `encode_example` makes of each record before truncation."""
        if not records:
            return np.zeros(0, np.int32)
        inputs = self._count([r["input"] for r in records])
        outputs = self._count([r["output"] for r in records])
        return (inputs + outputs + int(bool(self.tokenizer.adds_bos)) + 1).astype(np.int32)

    # --- loading ------------------------------------------------------------------------------

    def open(self, path: str, kind: str, *, split: str, bad_records: str) -> tuple[RecordFile, np.ndarray]:
        """(reader, id count of each of its records) for one file; parts not found are built here."""
        pieces = []
        for part in self.parts(path, kind, split):
            arrays = self._load(part)
            if arrays is None:
                arrays = self._build(part, split, bad_records)
            self._check(part, arrays, bad_records)
            pieces.append(arrays)
        counts = np.concatenate([p["lengths"] for p in pieces])
        if kind != "jsonl":
            reader = _open_reader(path, kind, split, self.fields, bad_records)
            if len(reader) != len(counts):
                raise DataError(f"{path}: the index has {len(counts)} records, the file {len(reader)}")
            return reader, counts
        skipped = sum(_meta_of(p)["skipped"] for p in pieces)
        reader = JsonlFile.from_offsets(path, self.fields, bad_records, np.concatenate([p["starts"] for p in pieces]),
                                        np.concatenate([p["ends"] for p in pieces]), skipped)
        return reader, counts

    def _load(self, part: Part) -> dict[str, np.ndarray] | None:
        target = self._file(part)
        try:
            with np.load(io.BytesIO(target.read_bytes()), allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, KeyError):  # absent, or unreadable: built again
            return None

    def _check(self, part: Part, arrays: dict[str, np.ndarray], bad_records: str) -> None:
        """Raise DataError for the part's first malformed line unless bad_records="skip"."""
        meta = _meta_of(arrays)
        if meta["first_bad"] is None or bad_records == "skip":
            return
        offset, reason = meta["first_bad"]
        line = line_number(part.path, int(offset))
        BadRecords(bad_records, key="data.bad_records", error=DataError)(f"{part.path}:{line}", reason)


def token_counts(tokenizer, texts: list[str]) -> np.ndarray:
    """The number of ids `tokenizer.encode(text)` gives for each text (one batched call where it can)."""
    return _counter(tokenizer)(texts)


def _counter(tokenizer):
    """A function: texts -> `token_counts(tokenizer, texts)`; the byte tokenizer's counts without tokenizing."""
    from jz3_jax.tokenizer.hf_tokenizer import HFTokenizer

    backend = getattr(tokenizer, "backend", None)
    if (isinstance(tokenizer, HFTokenizer) and type(tokenizer)._encode_plain is HFTokenizer._encode_plain
            and hasattr(backend, "encode_batch_fast")):
        def backend_counts(texts: list[str]) -> np.ndarray:
            # The same backend call as `encode`, without the offsets it would also compute.
            encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
            return np.fromiter((len(e) for e in encodings), np.int64, len(texts))

        if _is_byte_tokenizer(tokenizer):
            return lambda texts: _byte_counts(texts, backend_counts)
        return backend_counts
    if hasattr(tokenizer, "encode_batch"):
        return lambda texts: np.fromiter((len(ids) for ids in tokenizer.encode_batch(texts)), np.int64, len(texts))
    return lambda texts: np.fromiter((len(tokenizer.encode(text)) for text in texts), np.int64, len(texts))


def _is_byte_tokenizer(tokenizer) -> bool:
    """Whether `tokenizer` is the project's byte tokenizer (the same `tokenizers` pipeline)."""
    from jz3_jax.tokenizer.byte_tokenizer import BYTE_TOKENIZER_NAME

    if str(getattr(tokenizer, "source", "")) != BYTE_TOKENIZER_NAME:
        return False
    return tokenizer.backend.to_str() == _byte_pipeline()


@functools.cache
def _byte_pipeline() -> str:
    from jz3_jax.tokenizer.byte_tokenizer import byte_tokenizer

    return byte_tokenizer().backend.to_str()


def _byte_counts(texts: list[str], backend_counts) -> np.ndarray:
    """The byte tokenizer's id counts: one id per UTF-8 byte. Its pipeline has no normalizer and no merges,
    so a text is split only at its added tokens (<pad>, <s>, </s>, each one id); texts that may hold one
    (a "<"), or that are not valid UTF-8 (lone surrogates), go to the tokenizer itself."""
    counts = np.empty(len(texts), np.int64)
    others = []
    for i, text in enumerate(texts):
        if "<" in text:
            others.append(i)
            continue
        try:
            counts[i] = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            others.append(i)
    if others:
        counts[others] = backend_counts([texts[i] for i in others])
    return counts


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of what decides a tokenizer's id counts: its class, special ids, BOS rule and vocabulary
    (a HF tokenizer's serialized pipeline, else the ids of a probe text)."""
    probe = "Hello, world! 12345 \u00e9\u4e2d\u6587 \t\n  <s></s><|im_start|> \\frac{1}{2} \U0001F600"
    parts: dict[str, Any] = {"class": type(tokenizer).__qualname__, "adds_bos": bool(getattr(tokenizer, "adds_bos", 0)),
                             "ids": [getattr(tokenizer, name, None) for name in ("bos_id", "eos_id", "vocab_size")],
                             "probe": list(tokenizer.encode(probe))}
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "to_str"):
        parts["pipeline"] = hashlib.blake2b(backend.to_str().encode()).hexdigest()
    else:
        parts["source"] = str(getattr(tokenizer, "source", ""))
    return _digest(parts)


def file_identity(path: str) -> tuple[int, str]:
    """(size, digest of sampled blocks) of a file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        size = os.fstat(fd).st_size
        digest = hashlib.blake2b(str(size).encode())
        offsets = [0, max(0, size - _SAMPLE)]
        lengths = [_SAMPLE, _SAMPLE]
        for k in range(1, _BLOCKS + 1):
            offsets.append(size * k // (_BLOCKS + 1))
            lengths.append(_BLOCK)
        for offset, length in zip(offsets, lengths):
            digest.update(os.pread(fd, length, offset))
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def directory_identity(path: str) -> tuple[int, str]:
    """(total size, digest of every file's name and identity) of a directory tree (a TFDS builder)."""
    digest, total = hashlib.blake2b(), 0
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            size, sampled = file_identity(full)
            total += size
            digest.update(f"{os.path.relpath(full, path)}\0{size}\0{sampled}\0".encode())
    return total, digest.hexdigest()


def _open_reader(path: str, kind: str, split: str, fields: tuple[str, str], bad_records: str) -> RecordFile:
    if kind == "tfds":
        return TfdsSplit(path, split, fields, bad_records)
    return _ROW_READERS[kind](path, fields, bad_records)


def _line_start(fd: int, size: int, position: int) -> int:
    """The first line start at or after `position` (a line starts at 0 and after each newline)."""
    if position <= 0:
        return 0
    cursor = position - 1
    while cursor < size:
        block = os.pread(fd, 1 << 16, cursor)
        found = block.find(b"\n")
        if found >= 0:
            return cursor + found + 1
        cursor += len(block)
    return size


def _meta(records: int, skipped: int, first_bad: tuple[int, str] | None) -> np.ndarray:
    return np.array(json.dumps({"records": records, "skipped": skipped, "first_bad": first_bad}))


def _meta_of(arrays: dict[str, np.ndarray]) -> dict:
    return json.loads(str(arrays["meta"]))


def _digest(value: Any) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode()).hexdigest()
