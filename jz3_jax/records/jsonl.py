"""JSON-lines files: the one reader (with `file:line` errors and a bad-record policy) and the one writer.

    bad = BadRecords("skip", key="corpus.bad_records", error=CorpusError)
    for line in read_lines(["a.jsonl", "b.jsonl"], bad, validate=check):   # Line(path, number, record, ...)
        ...
    bad.skipped                                                             # lines dropped as malformed
    write_lines(path, records)                                              # atomic: whole or not at all

Blank lines are not records. A line that is not JSON, not a JSON object, or that `validate` refuses
is a bad record: under the policy "error" (the default) it raises the caller's error class naming
`path:line` and the reason; under "skip" it is counted and passed over.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Callable, Iterable, Iterator, NamedTuple

from jz3_jax.errors import RecordError, UserError
from jz3_jax.runtime.paths import as_path, atomic_write, is_local

POLICIES = ("error", "skip")
# A record check: the reason a decoded object is not a valid record, or None when it is.
Validator = Callable[[dict], "str | None"]


@dataclasses.dataclass
class BadRecords:
    """What happens to a malformed record: "error" raises `error` naming the place, "skip" counts it.

    Attributes:
        policy: "error" or "skip".
        key: the setting that chooses the policy (e.g. "data.bad_records"); the error tells the
            user to set it to skip. "" when the policy is not the user's choice.
        error: the `UserError` subclass raised, so a stage's callers see its own error type.
        hint: what the user can do about a bad record under "error" (default: set `key` to skip).
        skipped: how many bad records were skipped so far (the caller reports it).
    """

    policy: str = "error"
    key: str = ""
    error: type[UserError] = RecordError
    hint: str = ""
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise self.error(f"{self.key or 'bad_records'} must be 'error' or 'skip', got {self.policy!r}")

    def __call__(self, where: str, reason: str) -> None:
        """One bad record at `where`: raise under "error", count under "skip"."""
        if self.policy == "error":
            hint = self.hint or (f"set {self.key}=skip to skip such records" if self.key else "")
            raise self.error(f"{where}: {reason}", hint=hint)
        self.skipped += 1


class Line(NamedTuple):
    """One valid record of a JSON-lines file and where it stands (byte offsets for random access)."""

    path: str
    number: int  # 1-based line number
    record: dict
    start: int  # byte offset of the line in the file
    end: int  # byte offset after the line

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"


def parse_line(data: bytes | str, validate: Validator | None = None) -> tuple[dict | None, str | None]:
    """(record, None) for one valid line, else (None, the reason it is not a record)."""
    try:
        record = json.loads(data)
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 text ({error.reason})"
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    reason = validate(record) if validate is not None else None
    return (None, reason) if reason else (record, None)


def id_reason(value: object, field: str = "id") -> str | None:
    """Why `value` is not a record id (a non-empty string or an integer), or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return f"field {field!r} must be a non-empty string or an integer, got {value!r}"
    return None


def read_lines(paths: str | os.PathLike | Iterable[str | os.PathLike], bad: BadRecords | None = None, *,
               validate: Validator | None = None, error: type[UserError] | None = None) -> Iterator[Line]:
    """The valid records of the JSON-lines file(s) `paths`, in file then line order (local or URL).

    `bad`: the bad-record policy (default: raise `error`, or `bad.error`); `validate(record)`
    returns why a decoded object is not a valid record (None when it is). A file that cannot be
    opened raises `error` (default `bad.error`) naming it.
    """
    bad = bad if bad is not None else BadRecords(error=error or RecordError)
    error = error or bad.error
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        try:
            handle = as_path(path).open("rb")
        except OSError as cause:
            raise error(f"cannot read {path}: {cause.strerror or cause}") from cause
        offset = 0
        with handle:
            for number, data in enumerate(handle, 1):
                start, offset = offset, offset + len(data)
                if not data.strip():
                    continue
                record, reason = parse_line(data, validate)
                if reason:
                    bad(f"{path}:{number}", reason)
                    continue
                yield Line(str(path), number, record, start, offset)


def expand(spec: str, suffix: str = ".jsonl") -> list[str]:
    """The files `spec` names, sorted: a file, a directory's `*suffix` files, or a glob (local or URL).

    Empty when nothing matches; the caller words that error, since it knows which setting named `spec`.
    """
    path = as_path(spec)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return sorted(str(p) for p in path.glob(f"*{suffix}") if p.is_file())
    if is_local(spec):
        return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    # A URL: the pattern's last part globs its directory.
    return sorted(str(p) for p in path.parent.glob(path.name) if p.is_file()) if path.parent.is_dir() else []


def write_lines(path: str | os.PathLike, records: Iterable[dict], *, ascii_only: bool = False) -> int:
    """Write `records` as JSON lines to `path` atomically (temp file + rename); the number written."""
    count = 0
    with atomic_write(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=ascii_only) + "\n")
            count += 1
    return count


def line_number(path: str | os.PathLike, offset: int) -> int:
    """The 1-based number of the line starting at byte `offset` of `path` (local or a URL), for
    error messages of readers that seek by byte offsets."""
    count, done = 1, 0
    with as_path(path).open("rb") as f:
        while done < offset:
            block = f.read(min(16 << 20, offset - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count
