"""`filter` stage: synthesizer completions -> training records (`input`/`output` + provenance).

Reads the completion shards (`completions.py` has the contract), and drops, in this order (each
record is counted under the first reason that applies):

1. truncated: `finish_reason` is "length";
2. malformed: the completion does not follow `parse.py`'s format (sub-counts by reason);
3. contaminated: overlaps an evaluation set (`contamination.py`; sub-counts by the set matched);
4. exact_duplicate / near_duplicate of an earlier kept problem of the same kind (`dedup.py`).

Writes to the stage directory, each file atomically (temp file + rename), so a rerun replaces the
outputs whole and an interrupted run leaves the previous ones intact; `report.json` is written last:

- `records.jsonl`: `input` ("## Question\\n{problem}\\n\\n## Solution\\n", or "## Code Solution" for
  tool records), `output` (the solution), `id`, `kind`, `source_hash` (sha256 of the completion
  text), and `meta` when the completion had one.
- `removed.jsonl`: `id`, `reason` and details (sub-reason, matched sets, duplicate-of id, Jaccard).
- `report.json`: counts read / kept / removed by reason, evaluation sets indexed, settings, timing.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING

from jz3_jax.runtime.paths import atomic_write
from jz3_jax.synth.completions import iter_completions, resolve_inputs
from jz3_jax.synth.contamination import EvalIndex
from jz3_jax.synth.dedup import ExactDedup, NearDedup
from jz3_jax.synth.config import FilterConfig
from jz3_jax.synth.spec import FilterSpec
from jz3_jax.runtime import artifacts
from jz3_jax.synth.parse import KINDS, MALFORMED_REASONS, Malformed, parse_completion
from jz3_jax.synth.text import WordHasher, words

if TYPE_CHECKING:
    from jz3_jax.stages import StageContext

REASONS = ("truncated", "malformed", "contaminated", "exact_duplicate", "near_duplicate")
SOLUTION_HEADERS = {"cot": "## Solution", "tool": "## Code Solution"}


def training_input(problem: str, kind: str) -> str:
    """The prompt side of a training record, in the evaluation format."""
    return f"## Question\n{problem}\n\n{SOLUTION_HEADERS[kind]}\n"


def run(spec: FilterSpec, ctx: StageContext) -> dict:
    """Run the stage (process 0 only: it is a single-host CPU job); returns the report."""
    fc: FilterConfig = spec.filter
    fc.validate()
    if ctx.process_index != 0:
        ctx.logger.info("filter: process %d has nothing to do (process 0 writes the outputs)", ctx.process_index)
        return {}
    files = resolve_inputs(fc.inputs or artifacts.locate_str(ctx.run_dir, "synthesize.completions"))
    start = time.perf_counter()
    hasher = WordHasher()
    index = None
    if fc.decontaminate:
        index = EvalIndex.from_dir(fc.eval_dir, fc.eval_fields, fc.ngram, hasher)
        for name, stats in index.stats.items():
            if stats["empty_questions"] == stats["questions"]:
                ctx.logger.warning("filter: evaluation set %s has none of the fields %s", name, fc.eval_fields)
        ctx.logger.info("filter: indexed %d evaluation sets (%d n-gram/question hashes) in %.1fs",
                        len(index.names), len(index), time.perf_counter() - start)
    exact = {kind: ExactDedup() for kind in KINDS}
    near = {kind: NearDedup(fc.near_dup_threshold, fc.num_perm, fc.shingle, fc.minhash_seed) for kind in KINDS}
    counts = _Counts()
    stage_dir = ctx.stage_dir
    loop_start = time.perf_counter()
    with atomic_write(artifacts.output(stage_dir, "filter.records")) as out, atomic_write(artifacts.output(stage_dir, "filter.removed")) as removed:
        kept_hash, removed_hash = hashlib.sha256(), hashlib.sha256()
        for rec in iter_completions(files):
            counts.read(rec.kind)
            verdict = _judge(rec, index, exact[rec.kind], near[rec.kind], hasher)
            if isinstance(verdict, dict):
                counts.removed(verdict)
                line = json.dumps({"id": rec.id, "kind": rec.kind, **verdict}, ensure_ascii=False) + "\n"
                removed.write(line)
                removed_hash.update(line.encode())
            else:
                problem, solution = verdict
                row = {"input": training_input(problem, rec.kind), "output": solution, "id": rec.id,
                       "kind": rec.kind, "source_hash": hashlib.sha256(rec.completion.encode()).hexdigest()}
                if rec.meta is not None:
                    row["meta"] = rec.meta
                line = json.dumps(row, ensure_ascii=False) + "\n"
                out.write(line)
                kept_hash.update(line.encode())
                counts.kept(rec.kind)
            if counts.total % 50_000 == 0:
                ctx.logger.info("filter: %d read, %d kept", counts.total, counts.total_kept)
    loop_seconds = time.perf_counter() - loop_start
    report = {
        "inputs": [str(p) for p in files],
        **counts.summary(),
        "eval_sets": None if index is None else {"dir": str(fc.eval_dir), "hashes": len(index), "sets": index.stats},
        "settings": {"ngram": fc.ngram, "shingle": fc.shingle, "near_dup_threshold": fc.near_dup_threshold,
                     "num_perm": fc.num_perm, "minhash_seed": fc.minhash_seed, "lsh_bands": near["cot"].bands, "lsh_rows": near["cot"].rows,
                     "decontaminate": fc.decontaminate, "eval_fields": list(fc.eval_fields)},
        "outputs": {"records.jsonl": {"rows": counts.total_kept, "sha256": kept_hash.hexdigest()},
                    "removed.jsonl": {"rows": counts.total - counts.total_kept, "sha256": removed_hash.hexdigest()}},
        "seconds": round(time.perf_counter() - start, 3),
        "records_per_second": round(counts.total / loop_seconds, 1) if loop_seconds > 0 else None,
    }
    with atomic_write(artifacts.output(stage_dir, "filter.report")) as f:
        f.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    removed_total = report["read"] - report["kept"]
    ctx.logger.info("filter: read %d, kept %d, removed %d %s (%.0f records/s)", report["read"], report["kept"],
                    removed_total, report["removed"], report["records_per_second"] or 0)
    return report


def _judge(rec, index, exact: ExactDedup, near: NearDedup, hasher: WordHasher):
    """(problem, solution) to keep, or a dict saying why the record is removed."""
    if rec.finish_reason == "length":
        return {"reason": "truncated"}
    parsed = parse_completion(rec.completion, rec.kind)
    if isinstance(parsed, Malformed):
        return {"reason": "malformed", "detail": parsed.reason}
    problem_words = words(parsed.problem)
    if index is not None:
        match = index.match(problem_words, words(parsed.solution))
        if match is not None:
            return {"reason": "contaminated", "set": match.set, "sets": match.sets, "ngrams": match.ngrams,
                    "example": match.example}
    key = exact.key(parsed.problem)
    first = exact.find(key)
    if first is not None:
        return {"reason": "exact_duplicate", "duplicate_of": first}
    similar = near.check(hasher(problem_words), rec.id)
    if similar is not None:
        return {"reason": "near_duplicate", "duplicate_of": similar[0], "jaccard": round(similar[1], 4)}
    exact.add(key, rec.id)
    return parsed.problem, parsed.solution


class _Counts:
    def __init__(self) -> None:
        self.total = self.total_kept = 0
        self.removed_by = dict.fromkeys(REASONS, 0)
        self.malformed_by = dict.fromkeys(MALFORMED_REASONS, 0)
        self.contaminated_by: dict[str, int] = {}
        self.by_kind = {kind: {"read": 0, "kept": 0} for kind in KINDS}

    def read(self, kind: str) -> None:
        self.total += 1
        self.by_kind[kind]["read"] += 1

    def kept(self, kind: str) -> None:
        self.total_kept += 1
        self.by_kind[kind]["kept"] += 1

    def removed(self, verdict: dict) -> None:
        self.removed_by[verdict["reason"]] += 1
        if verdict["reason"] == "malformed":
            self.malformed_by[verdict["detail"]] += 1
        elif verdict["reason"] == "contaminated":
            self.contaminated_by[verdict["set"]] = self.contaminated_by.get(verdict["set"], 0) + 1

    def summary(self) -> dict:
        return {"read": self.total, "kept": self.total_kept, "removed": dict(self.removed_by),
                "malformed_by_reason": dict(self.malformed_by),
                "contaminated_by_set": dict(sorted(self.contaminated_by.items())), "by_kind": self.by_kind}
