"""The `corpus` stage: read `corpus.sources`, cut into snippets, dedup, sample, write snippets.jsonl.

Output `RUN_DIR/corpus/snippets.jsonl`, one object per line: `id` (the first 16 hex digits of the
SHA-256 of the text: the same snippet has the same id in every run), `source` (the source tag) and
`text` (at most `corpus.max_chars` characters), in a seeded random order; and `report.json` (counts
per source: documents, snippets, duplicates, kept; skipped bad records). Both are written whole
(temp file + rename), and a rerun with the same config writes the same files. Process 0 does the
work; other processes return at once.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING

from jz3_jax.corpus.cutting import cut
from jz3_jax.corpus.sources import BadRecords, CorpusError, Fields, parse_spec, read_documents
from jz3_jax.prompts.snippets import content_id
from jz3_jax.records.jsonl import write_lines
from jz3_jax.corpus.spec import CorpusSpec
from jz3_jax.runtime import artifacts
from jz3_jax.runtime.paths import atomic_write

if TYPE_CHECKING:
    from jz3_jax.stages import StageContext


def sample_key(seed: int, sid: str, weight: float) -> float:
    """Weighted sampling without replacement (Efraimidis-Spirakis): keep the largest keys. The
    uniform draw comes from a hash of (seed, id), so the sample does not depend on reading order."""
    digest = hashlib.sha256(f"{seed}\0{sid}".encode()).digest()
    uniform = (int.from_bytes(digest[:8], "little") + 0.5) / 2**64
    return math.log(uniform) / weight


def run(spec: CorpusSpec, ctx: StageContext) -> dict:
    """Build the snippet file; returns the report."""
    cc, seed = spec.corpus, spec.seed
    if not cc.sources:
        raise CorpusError("corpus.sources is empty: list paths, folders or globs of math texts "
                          "(optionally path=weight)")
    if cc.max_chars < 1 or cc.min_chars < 0:
        raise CorpusError(f"corpus.max_chars must be >= 1 and corpus.min_chars >= 0, got {cc.max_chars}, "
                          f"{cc.min_chars}")
    if cc.max_snippets < 0:
        raise CorpusError(f"corpus.max_snippets must be >= 0 (0 = all), got {cc.max_snippets}")
    sources = [parse_spec(entry) for entry in cc.sources]  # every entry checked before any is read
    if ctx.process_index != 0:
        return {}
    fields = Fields(list(cc.text_fields), list(cc.question_fields), list(cc.answer_fields))
    bad = BadRecords(cc.bad_records)
    seen: set[str] = set()
    candidates: list[tuple[float, dict]] = []
    per_source: dict[str, dict] = {}
    for source in sources:
        counts = per_source.setdefault(source.tag, {"documents": 0, "snippets": 0, "duplicates": 0, "short": 0,
                                                  "kept": 0, "weight": source.weight})
        for document in read_documents(source, fields, bad):
            counts["documents"] += 1
            for text in cut(document.text, cc.max_chars, document.kind):
                if len(text) < cc.min_chars:
                    counts["short"] += 1
                    continue
                sid = content_id(text)
                if sid in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(sid)
                counts["snippets"] += 1
                if source.weight > 0:
                    candidates.append((sample_key(seed, sid, source.weight), {"id": sid, "source": source.tag,
                                                                              "text": text}))
    candidates.sort(key=lambda item: (-item[0], item[1]["id"]))
    if cc.max_snippets:
        candidates = candidates[:cc.max_snippets]
    if not candidates:
        raise CorpusError("the corpus sources gave no snippets (check corpus.sources and corpus.min_chars)")
    for _, record in candidates:
        per_source[record["source"]]["kept"] += 1
    write_lines(artifacts.output(ctx.stage_dir, "corpus.snippets"), (record for _, record in candidates))
    report = {"snippets": len(candidates), "skipped_records": bad.skipped, "max_chars": cc.max_chars,
              "sources": per_source}
    with atomic_write(artifacts.output(ctx.stage_dir, "corpus.report")) as f:
        json.dump(report, f, indent=2)
    ctx.logger.info("corpus: %d snippets from %d source(s) -> %s (%d bad records skipped)", len(candidates),
                    len(sources), artifacts.output(ctx.stage_dir, "corpus.snippets"), bad.skipped)
    return report
