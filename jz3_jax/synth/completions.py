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
import glob
import json
import os
from typing import Iterator

from etils import epath

from jz3_jax.runtime.paths import as_path, is_local
from jz3_jax.synth.errors import FilterError
from jz3_jax.synth.parse import KINDS

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


def default_inputs(run_dir: str | os.PathLike) -> str:
    """Where the synthesize stage writes its shards (every process's, in one shared directory)."""
    return str(as_path(run_dir) / "synthesize" / "completions" / "*.jsonl")


def resolve_inputs(spec: str) -> list[epath.Path]:
    """The completion files named by `spec` (a file, a directory of *.jsonl, or a glob; local or
    gs://), sorted."""
    path = as_path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        if not files:
            raise FilterError(f"no completion files: directory {spec!r} has no *.jsonl files")
        return files
    if is_local(spec):
        files = sorted(as_path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    else:  # a URL: the pattern's last part globs its directory
        files = sorted(p for p in path.parent.glob(path.name) if p.is_file()) if path.parent.is_dir() else []
    if not files:
        raise FilterError(f"no completion files: {spec!r} does not exist or matches no files "
                          "(set filter.inputs, or run the synthesize stage first)")
    return files


def iter_completions(files: list[epath.Path]) -> Iterator[Completion]:
    """Validated completions of `files`, in file then line order."""
    for path in files:
        with path.open(encoding="utf-8") as f:
            lineno = 0
            try:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield _validate(line, f"{path}:{lineno}")
            except UnicodeDecodeError as e:
                raise FilterError(f"{path}: not UTF-8 text after line {lineno} ({e.reason})") from None


def _validate(line: str, where: str) -> Completion:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise FilterError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise FilterError(f"{where}: expected a JSON object, got {type(row).__name__}")
    rid = row.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise FilterError(f"{where}: field 'id' must be a non-empty string or an integer, got {rid!r}")
    if not isinstance(row.get("completion"), str):
        raise FilterError(f"{where}: field 'completion' must be a string, got {row.get('completion')!r:.80}")
    if row.get("finish_reason") not in FINISH_REASONS:
        raise FilterError(f"{where}: field 'finish_reason' must be one of {FINISH_REASONS}, "
                          f"got {row.get('finish_reason')!r}")
    kind = row.get("kind", "cot")
    if kind not in KINDS:
        raise FilterError(f"{where}: field 'kind' must be one of {KINDS}, got {kind!r}")
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise FilterError(f"{where}: field 'meta' must be an object, got {type(meta).__name__}")
    return Completion(rid, row["completion"], row["finish_reason"], kind, meta, where)
