"""The `corpus` stage: read `corpus.sources`, cut into snippets, dedup, sample, write snippets.jsonl.

Output `RUN_DIR/corpus/snippets.jsonl`, one object per line: `id` (the first 16 hex digits of the
SHA-256 of the text: the same snippet has the same id in every run), `source` (the source tag) and
`text` (at most `corpus.max_chars` characters), in a seeded random order; and `report.json` (counts
per source: documents, snippets, duplicates, kept; skipped bad records). Both are written whole
(temp file + rename), and a rerun with the same config writes the same files. Process 0 does the
work; other processes return at once.

Memory does not hold the texts: each snippet is spilled to a local temp file as it is cut, and
memory keeps 32 bytes per snippet (`candidates.py`); dedup and the weighted sample are computed on
those columns at the end, giving the same snippets in the same order as sorting all texts in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING

from jz3_jax.corpus.candidates import CandidateStore
from jz3_jax.corpus.cutting import cut
from jz3_jax.corpus.sources import BadRecords, CorpusError, Fields, parse_spec, read_documents
from jz3_jax.prompts.snippets import content_id
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
    per_source: dict[str, dict] = {}
    tags: dict[str, int] = {}  # source tag -> index in the store (sources may share a tag)
    with CandidateStore() as store:
        for source in sources:
            counts = per_source.setdefault(source.tag, {"documents": 0, "snippets": 0, "duplicates": 0, "short": 0,
                                                      "kept": 0, "weight": source.weight})
            index = tags.setdefault(source.tag, len(tags))
            for document in read_documents(source, fields, bad):
                counts["documents"] += 1
                for text in cut(document.text, cc.max_chars, document.kind):
                    if len(text) < cc.min_chars:
                        counts["short"] += 1
                        continue
                    sid = content_id(text)
                    if source.weight > 0:
                        store.add(sid, index, sample_key(seed, sid, source.weight),
                                  {"id": sid, "source": source.tag, "text": text})
                    else:
                        store.add(sid, index, None, None)
        picked = store.pick(cc.max_snippets)
        if not len(picked):
            raise CorpusError("the corpus sources gave no snippets (check corpus.sources and corpus.min_chars)")
        totals = store.counts(len(tags))
        for tag, index in tags.items():
            for name in ("snippets", "duplicates", "kept"):
                per_source[tag][name] += int(totals[name][index])
        store.write(artifacts.output(ctx.stage_dir, "corpus.snippets"), picked)
    report = {"snippets": len(picked), "skipped_records": bad.skipped, "max_chars": cc.max_chars,
              "sources": per_source}
    with atomic_write(artifacts.output(ctx.stage_dir, "corpus.report")) as f:
        json.dump(report, f, indent=2)
    ctx.logger.info("corpus: %d snippets from %d source(s) -> %s (%d bad records skipped)", len(picked),
                    len(sources), artifacts.output(ctx.stage_dir, "corpus.snippets"), bad.skipped)
    return report
