"""Snippet records, the input of the prompts: JSON lines with `text` and optional `id` and `source`.

Written by the `corpus` stage (and `select`); read by `distill` and `synthesize`. A snippet id
seen twice is read once (its first line); a record without one gets its content hash, as the
corpus stage would give it; other fields (e.g. the select stage's `score`) are ignored. Anything
malformed is an error naming file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from etils import epath

from jz3_jax.errors import UserError
from jz3_jax.records.jsonl import id_reason, read_lines


class SnippetError(UserError):
    """A missing or malformed snippets file; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Snippet:
    id: str
    source: str
    text: str


def content_id(text: str) -> str:
    """The id of a snippet without one: the first 16 hex digits of the SHA-256 of its text (as the
    corpus stage assigns them)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_snippets(path: str | os.PathLike, key: str = "distill.snippets") -> list[Snippet]:
    """The snippet records of the jsonl file `path`, in file order (`key`: the setting that named it)."""
    path = epath.Path(path)
    if not path.exists():
        raise SnippetError(f"snippets file {str(path)!r} does not exist (run the corpus stage or set {key})")
    snippets, seen = [], set()
    for line in read_lines(path, error=SnippetError, validate=snippet_reason):
        snippet = snippet_of(line.record)
        if snippet.id in seen:
            continue  # e.g. a snippet selected twice: one set of prompts
        seen.add(snippet.id)
        snippets.append(snippet)
    if not snippets:
        raise SnippetError(f"snippets file {str(path)!r} has no records")
    return snippets


def snippet_of(row: dict) -> Snippet:
    """The snippet of a valid record (`snippet_reason(row)` is None): a missing id is its content hash."""
    sid = row["id"] if "id" in row else content_id(row["text"])
    return Snippet(str(sid), row.get("source", ""), row["text"])


def snippet_reason(row: dict) -> str | None:
    """Why `row` is not a snippet record (None when it is)."""
    text, source = row.get("text"), row.get("source", "")
    if not isinstance(text, str) or not text.strip():
        return "field 'text' must be a non-empty string"
    if not isinstance(source, str):
        return f"field 'source' must be a string, got {source!r}"
    return id_reason(row.get("id", "-"))
