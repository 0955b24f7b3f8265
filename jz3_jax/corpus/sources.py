"""Corpus sources: parse `corpus.sources` entries and read their documents.

An entry is `PATH[=WEIGHT]` (a file, a folder searched recursively, or a glob),
`hf:NAME[:CONFIG][:SPLIT]` or `tfds:BUILDER_DIR[:SPLIT]`. Files are read by extension: `.jsonl`,
`.json`, `.parquet` and `.array_record` hold records (read through `jz3_jax.records.formats`),
`.md` / `.markdown` are markdown, `.tex` / `.latex` LaTeX, `.txt` plain text.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Iterable, Iterator

from jz3_jax.errors import UserError
from jz3_jax.records.formats import Row, format_of, iter_rows
from jz3_jax.records.jsonl import BadRecords as _BadRecords

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet", ".array_record")
TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".tex": "latex", ".latex": "latex", ".txt": "plain"}
SUFFIXES = (*RECORD_SUFFIXES, *TEXT_SUFFIXES)


class CorpusError(UserError):
    """Bad corpus input: a missing source, an unreadable file, a malformed record (named with its line)."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One parsed `corpus.sources` entry."""

    location: str  # a path, folder or glob; the dataset name for hf/tfds
    weight: float
    scheme: str = "file"  # file, hf, tfds
    split: str = "train"
    config: str = ""  # a Hugging Face dataset's configuration name

    @property
    def tag(self) -> str:
        """The source tag snippets carry: the dataset name, folder name or file stem."""
        if self.scheme != "file":
            return self.location.rstrip("/").rsplit("/", 1)[-1] if self.scheme == "tfds" else self.location
        base = self.location.rstrip("/")
        if glob.has_magic(base):
            head = base.split("*")[0].split("?")[0].split("[")[0]
            base = os.path.dirname(head) if not head.endswith("/") else head.rstrip("/")
        name = os.path.basename(base) or base
        return os.path.splitext(name)[0] if os.path.isfile(base) else name


@dataclasses.dataclass(frozen=True)
class Document:
    """One text to cut: where it came from (`file:line`) and how to cut it (a `cutting.DOC_KINDS`)."""

    text: str
    kind: str
    where: str


@dataclasses.dataclass
class Fields:
    """Which record fields hold the text, or the question and answer."""

    text: list[str]
    question: list[str]
    answer: list[str]


def parse_spec(entry: str) -> SourceSpec:
    """Parse one `corpus.sources` entry (`location[=weight]`)."""
    location, weight = entry.strip(), 1.0
    head, sep, tail = location.rpartition("=")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            pass  # an "=" that is part of the path
        else:
            location = head.strip()
    if weight < 0:
        raise CorpusError(f"corpus.sources entry {entry!r}: the weight must be >= 0")
    for scheme in ("hf", "tfds"):
        if location.startswith(scheme + ":"):
            parts = location[len(scheme) + 1:].split(":")
            if not parts[0] or len(parts) > (3 if scheme == "hf" else 2):
                raise CorpusError(f"corpus.sources entry {entry!r}: expected {scheme}:NAME"
                                  f"{'[:CONFIG]' if scheme == 'hf' else ''}[:SPLIT]")
            config = parts[1] if len(parts) == 3 else ""
            return SourceSpec(parts[0], weight, scheme, parts[-1] if len(parts) > 1 else "train", config)
    if not location:
        raise CorpusError(f"corpus.sources entry {entry!r} names no path")
    return SourceSpec(location, weight)


def source_files(spec: SourceSpec) -> list[str]:
    """The readable files of a file source, sorted; an error when there are none."""
    location = spec.location
    if glob.has_magic(location):
        candidates = sorted(glob.glob(location, recursive=True))
    elif os.path.isdir(location):
        candidates = sorted(os.path.join(root, name) for root, _, names in os.walk(location) for name in names)
    elif os.path.isfile(location):
        if not _readable(location):
            raise CorpusError(f"{location}: unknown file type (expected one of {', '.join(SUFFIXES)})")
        return [location]
    else:
        raise CorpusError(f"corpus source {location!r} does not exist")
    files = [f for f in candidates if os.path.isfile(f) and _readable(f)]
    if not files:
        raise CorpusError(f"corpus source {location!r} has no {', '.join(SUFFIXES)} files")
    return files


def _readable(name: str) -> bool:
    """Whether file `name` is a record or text file by its extension."""
    return format_of(name) is not None or os.path.splitext(name)[1].lower() in TEXT_SUFFIXES


@dataclasses.dataclass
class BadRecords(_BadRecords):
    """The `corpus.bad_records` policy: raise CorpusError naming the place, or count (`skipped`)."""

    key: str = "corpus.bad_records"
    error: type[UserError] = CorpusError


def read_documents(spec: SourceSpec, fields: Fields, bad: BadRecords) -> Iterator[Document]:
    """Every document of one source, in a stable order."""
    if spec.scheme == "hf":
        yield from _hf_documents(spec, fields, bad)
        return
    if spec.scheme == "tfds":
        yield from _tfds_documents(spec, fields, bad)
        return
    for path in source_files(spec):
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in TEXT_SUFFIXES:
            yield from _documents(iter_rows(path, format_of(path), bad), fields, bad)
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as error:
            bad(path, f"not UTF-8 text ({error})")
            continue
        except OSError as error:
            raise CorpusError(f"cannot read {path}: {error.strerror or error}") from error
        yield Document(text, TEXT_SUFFIXES[suffix], path)


def record_document(row: Any, fields: Fields, where: str) -> tuple[Document | None, str | None]:
    """The document of one record, or (None, why it has none)."""
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    row = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in row.items()}
    for name in fields.text:
        if isinstance(row.get(name), str) and row[name].strip():
            return Document(row[name], "plain", where), None
    question = next((row[n] for n in fields.question if isinstance(row.get(n), str) and row[n].strip()), None)
    answer = next((row[n] for n in fields.answer if isinstance(row.get(n), str) and row[n].strip()), None)
    if question is not None and answer is not None:
        return Document(question.rstrip() + "\n\n" + answer.strip(), "qa", where), None
    wanted = ", ".join(fields.text) + " or a question (" + ", ".join(fields.question) + ") and an answer (" + \
        ", ".join(fields.answer) + ")"
    return None, f"no non-empty text field ({wanted})"


def _documents(rows: Iterable[Row], fields: Fields, bad: BadRecords) -> Iterator[Document]:
    """The documents of decoded records; a record without one goes to `bad`."""
    for row in rows:
        document, reason = record_document(row.value, fields, row.where)
        if document is None:
            bad(row.where, reason)
        else:
            yield document


def _hf_documents(spec: SourceSpec, fields: Fields, bad: BadRecords) -> Iterator[Document]:
    try:
        import datasets
    except ImportError as error:
        raise CorpusError(f"corpus source hf:{spec.location} needs the `datasets` package ({error})") from error
    try:
        rows = datasets.load_dataset(spec.location, spec.config or None, split=spec.split, streaming=True)
    except Exception as error:  # network, auth, unknown dataset: all end the stage with the cause
        raise CorpusError(f"cannot load Hugging Face dataset {spec.location!r} split {spec.split!r}: "
                          f"{error}") from error
    where = f"hf:{spec.location}:{spec.split}"
    yield from _documents((Row(f"{where} record {i}", i, row) for i, row in enumerate(rows)), fields, bad)


def _tfds_documents(spec: SourceSpec, fields: Fields, bad: BadRecords) -> Iterator[Document]:
    yield from _documents(iter_rows(spec.location, "tfds", bad, split=spec.split), fields, bad)
