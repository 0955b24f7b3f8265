"""The contract between the `synthesize` stage and the `filter` stage: completion shards.

`synthesize` writes JSON-lines shards to `RUN_DIR/synthesize/completions/*.jsonl` (its own
`metrics.jsonl` and logs stay outside that directory), one object per line:

- `id` (str or int, required): unique id of the synthesis request.
- `completion` (str, required): the model's text, in the format of `jz3_jax.synth.parse`.
- `finish_reason` (required): "stop" (the model ended) or "length" (cut at the token limit).
- `kind` (optional, default "cot"): "cot" (natural-language solution) or "tool" (Python solution).
- `prompt` (str, optional): the prompt; not used by the filter.
- `meta` (object, optional): provenance (snippet id, education stage, model, sampling settings...),
  copied unchanged into the training record.

Blank lines are skipped. Anything else that breaks the contract (bad JSON, a missing or mistyped
field) is an error naming the file and line: it is a bug upstream, not a bad sample.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

from etils import epath

from jz3_jax.errors import FilterError
from jz3_jax.records.jsonl import expand, id_reason, read_lines
from jz3_jax.runtime.paths import as_path
from jz3_jax.synth.prompts import kind_meta_reason

FINISH_REASONS = ("stop", "length")


@dataclasses.dataclass(frozen=True)
class Completion:
    """One validated line of a completion shard."""

    id: str | int
    completion: str
    finish_reason: str
    kind: str
    meta: dict | None
    where: str  # "path:line"


def resolve_inputs(spec: str) -> list[epath.Path]:
    """The completion files named by `spec` (a file, a directory of *.jsonl, or a glob; local or
    gs://), sorted."""
    files = [as_path(name) for name in expand(spec)]
    if not files and as_path(spec).is_dir():
        raise FilterError(f"no completion files: directory {spec!r} has no *.jsonl files")
    if not files:
        raise FilterError(f"no completion files: {spec!r} does not exist or matches no files "
                          "(set filter.inputs, or run the synthesize stage first)")
    return files


def iter_completions(files: list[epath.Path]) -> Iterator[Completion]:
    """Validated completions of `files`, in file then line order."""
    for line in read_lines(files, error=FilterError, validate=check_completion):
        row = line.record
        yield Completion(row["id"], row["completion"], row["finish_reason"], row.get("kind", "cot"),
                         row.get("meta"), line.where)


def check_completion(row: dict) -> str | None:
    """Why `row` is not a completion record (None when it is)."""
    if reason := id_reason(row.get("id")):
        return reason
    if not isinstance(row.get("completion"), str):
        return f"field 'completion' must be a string, got {row.get('completion')!r:.80}"
    if row.get("finish_reason") not in FINISH_REASONS:
        return f"field 'finish_reason' must be one of {FINISH_REASONS}, got {row.get('finish_reason')!r}"
    return kind_meta_reason(row)
