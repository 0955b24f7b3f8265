"""Prompt records for the `synthesize` stage: JSON lines with `id` and `prompt`.

Each line is an object with `id` (non-empty string or integer, unique in the file), `prompt`
(non-empty string), and optionally `kind` ("cot" or "tool", default "cot") and `meta` (an object
of provenance, copied into the completion record). Blank lines are skipped; anything else that
breaks this is an error naming the file and line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jz3_jax.errors import SynthesizeError
from jz3_jax.records.jsonl import id_reason, read_lines
from jz3_jax.synth.parse import KINDS


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    id: str | int
    prompt: str
    kind: str = "cot"
    meta: dict | None = None


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """All prompt records of the jsonl file `path`, in file order."""
    path = Path(path)
    if not path.is_file():
        raise SynthesizeError(f"prompts file {str(path)!r} does not exist (set synthesize.prompts)")
    records, seen = [], {}
    for line in read_lines(path, error=SynthesizeError, validate=_check):
        row = line.record
        if row["id"] in seen:
            raise SynthesizeError(f"{line.where}: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = line.number
        records.append(PromptRecord(row["id"], row["prompt"], row.get("kind", "cot"), row.get("meta")))
    if not records:
        raise SynthesizeError(f"prompts file {str(path)!r} has no records")
    return records


def _check(row: dict) -> str | None:
    """Why `row` is not a prompt record (None when it is)."""
    prompt = row.get("prompt")
    if reason := id_reason(row.get("id")):
        return reason
    if not isinstance(prompt, str) or not prompt:
        return f"field 'prompt' must be a non-empty string, got {prompt!r:.80}"
    return kind_meta_reason(row)


def kind_meta_reason(row: dict) -> str | None:
    """Why the optional `kind` / `meta` fields of a prompt or completion record are invalid (None when
    they are fine)."""
    kind, meta = row.get("kind", "cot"), row.get("meta")
    if kind not in KINDS:
        return f"field 'kind' must be one of {KINDS}, got {kind!r}"
    if meta is not None and not isinstance(meta, dict):
        return f"field 'meta' must be an object, got {type(meta).__name__}"
    return None


def prompts_from_snippets(path: str | Path, sc, seed: int) -> list[PromptRecord]:
    """Prompt records rendered from the snippet file `path` with the prompt library, under the
    `synthesize.levels` / `level_policy` / `kinds` settings `sc`: the prompts distill sends the
    teacher, so the synthesizer sees the format it was fine-tuned on. Ids are
    `SNIPPET_ID:LEVEL:KIND`; `meta` carries the snippet id, source, level and kind."""
    from jz3_jax.prompts.plan import PromptPlan
    from jz3_jax.prompts.snippets import read_snippets

    plan = PromptPlan.from_config("synthesize", sc, seed)
    records = []
    for snippet in read_snippets(path, key="synthesize.snippets"):
        for p in plan.prompts(snippet.id, snippet.source, snippet.text):
            meta = {"snippet_id": p.snippet_id, "source": p.source, "level": p.level, "kind": p.kind}
            records.append(PromptRecord(p.id, p.prompt, p.kind, meta))
    return records
