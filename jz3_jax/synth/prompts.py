"""Prompt records for the `synthesize` stage: JSON lines with `id` and `prompt`.

Each line is an object with `id` (non-empty string or integer, unique in the file), `prompt`
(non-empty string), and optionally `kind` ("cot" or "tool", default "cot") and `meta` (an object
of provenance, copied into the completion record). Blank lines are skipped; anything else that
breaks this is an error naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jz3_jax.synth.errors import SynthesizeError
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
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = _parse(line, f"{path}:{lineno}")
            if record.id in seen:
                raise SynthesizeError(f"{path}:{lineno}: duplicate id {record.id!r} (first on line {seen[record.id]})")
            seen[record.id] = lineno
            records.append(record)
    if not records:
        raise SynthesizeError(f"prompts file {str(path)!r} has no records")
    return records


def _parse(line: str, where: str) -> PromptRecord:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise SynthesizeError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise SynthesizeError(f"{where}: expected a JSON object, got {type(row).__name__}")
    rid = row.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise SynthesizeError(f"{where}: field 'id' must be a non-empty string or an integer, got {rid!r}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise SynthesizeError(f"{where}: field 'prompt' must be a non-empty string, got {prompt!r:.80}")
    kind = row.get("kind", "cot")
    if kind not in KINDS:
        raise SynthesizeError(f"{where}: field 'kind' must be one of {KINDS}, got {kind!r}")
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise SynthesizeError(f"{where}: field 'meta' must be an object, got {type(meta).__name__}")
    return PromptRecord(rid, prompt, kind, meta)


def prompts_from_snippets(path: str | Path, sc, seed: int) -> list[PromptRecord]:
    """Prompt records rendered from the snippet file `path` with the prompt library, under the
    `synthesize.levels` / `level_policy` / `kinds` settings `sc`: the prompts distill sends the
    teacher, so the synthesizer sees the format it was fine-tuned on. Ids are
    `SNIPPET_ID:LEVEL:KIND`; `meta` carries the snippet id, source, level and kind."""
    from jz3_jax.prompts.plan import PromptPlan
    from jz3_jax.prompts.snippets import read_snippets

    plan = PromptPlan.build("synthesize", sc.levels, sc.kinds, sc.level_policy, seed, sc.source_levels,
                            sc.source_kinds)
    records = []
    for snippet in read_snippets(path, key="synthesize.snippets"):
        for p in plan.prompts(snippet.id, snippet.source, snippet.text):
            meta = {"snippet_id": p.snippet_id, "source": p.source, "level": p.level, "kind": p.kind}
            records.append(PromptRecord(p.id, p.prompt, p.kind, meta))
    return records
