"""`filter` stage: synthesizer completions -> training records (`input`/`output` + provenance).

Reads the completion shards (`completions.py` has the contract), and drops, in this order (each
record is counted under the first reason that applies):

1. truncated: `finish_reason` is "length";
2. malformed: the completion does not follow `parse.py`'s format (sub-counts by reason);
3. contaminated: overlaps an evaluation set (`contamination.py`; sub-counts by the set matched);
4. exact_duplicate: the same normalised problem (and kind) as an earlier record that passed 1-3;
5. near_duplicate: a problem of the same kind with Jaccard >= the threshold to an earlier kept one
   (`dedup.py`: MinHash-LSH candidates, capped per bucket, verified exactly).

Every process of the job takes part, and the outputs do not depend on how many there are: each
reads its own byte range of the inputs and judges 1-3 (`filter_scan.py`), spooling the survivors'
fixed-width deduplication features to `RUN_DIR/filter/.work/` (on the shared run directory); the
exact and near passes are sort-based joins split by key partitions (`dedup_index.py`); process 0
decides near duplicates in record order and streams the outputs (`filter_merge.py`). Memory stays
flat in the number of records. A run directory that is a URL (gs://) has no shared file system for
the spools: then process 0 does all the work in a local temporary directory.

Writes to the stage directory, each file atomically (temp file + rename), so a rerun replaces the
outputs whole and an interrupted run leaves the previous ones intact; `report.json` is written last:

- `records.jsonl`: `input` ("## Question\\n{problem}\\n\\n## Solution\\n", or "## Code Solution" for
  tool records), `output` (the solution), `id`, `kind`, `source_hash` (sha256 of the completion
  text), and `meta` when the completion had one.
- `removed.jsonl`: `id`, `reason` and details (sub-reason, matched sets, duplicate-of id, Jaccard).
- `report.json`: counts read / kept / removed by reason, evaluation sets indexed, settings, timing.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tqdm import tqdm

from jz3_jax.runtime import artifacts
from jz3_jax.runtime.paths import as_path, atomic_write, is_local
from jz3_jax.synth.completions import resolve_inputs
from jz3_jax.synth.config import FilterConfig
from jz3_jax.synth.contamination import EvalIndex
from jz3_jax.synth.dedup import MinHasher, resolve_near, sketch_margin
from jz3_jax.synth.dedup_index import NearStats, Share, candidates, exact_pass, near_pass, read_edges, read_exact
from jz3_jax.synth.dedup_spool import Spools, SpoolWriter
from jz3_jax.synth.filter_merge import merge
from jz3_jax.synth.filter_scan import Judge, Verdicts, scan, share_of
from jz3_jax.synth.spec import FilterSpec
from jz3_jax.synth.text import WordHasher

if TYPE_CHECKING:
    from jz3_jax.stages import StageContext

WORK_DIR = ".work"


def run(spec: FilterSpec, ctx: StageContext) -> dict:
    """Run the stage on every process of the job; process 0 writes the outputs and returns the report
    (the other processes return {})."""
    fc: FilterConfig = spec.filter
    fc.validate()
    files = [str(p) for p in resolve_inputs(fc.inputs or artifacts.locate_str(ctx.run_dir, "synthesize.completions"))]
    shared = is_local(ctx.stage_dir)
    workers = ctx.process_count if shared else 1
    me = ctx.process_index
    if me >= workers:
        ctx.logger.info("filter: process %d has nothing to do (the run directory is not a shared file system)", me)
        return {}
    barrier: Callable[[str, BaseException | None], None] = _alone
    if workers > 1:
        from jz3_jax.runtime import peers  # imports jax: only where there are peers

        barrier = peers.agree
    work = Path(ctx.stage_dir) / WORK_DIR if shared else Path(tempfile.mkdtemp(prefix="jz3-filter-"))
    try:
        report = _run(fc, ctx, files, work, me, workers, barrier)
    except BaseException:
        shutil.rmtree(work if me == 0 else work / f"p{me}", ignore_errors=True)
        raise
    if me == 0:  # the others are done with the spools (they returned after the near pass)
        shutil.rmtree(work, ignore_errors=True)
    return report


def _alone(name: str, error: BaseException | None) -> None:
    if error is not None:
        raise error


def _step(name: str, barrier: Callable[[str, BaseException | None], None], fn: Callable):
    """Run `fn` here, then wait for every process to finish its own; raise if any failed."""
    error, result = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised by the barrier, here and as PeerFailed in the peers
        error = e
    barrier(name, error)
    return result


def _run(fc: FilterConfig, ctx: StageContext, files: list[str], work: Path, me: int, workers: int, barrier) -> dict:
    start = time.perf_counter()
    mine = work / f"p{me}"
    minhasher = MinHasher(fc.near_dup_threshold, fc.num_perm, fc.shingle, fc.minhash_seed)
    # Process 0 clears what a killed run left behind before anyone writes there.
    _step("filter start", barrier, lambda: shutil.rmtree(work, ignore_errors=True) if me == 0 else None)
    phases = _Phases(start)

    def read() -> dict:
        hasher = WordHasher()
        index = _eval_index(fc, ctx, hasher)
        sizes = [as_path(f).stat().length for f in files]
        pieces = share_of(files, sizes, me, workers)
        own_bytes = sum(p.end - p.start for p in pieces)
        bar = tqdm(desc="filter: read", unit="rec", disable=me != 0, mininterval=1.0, dynamic_ncols=True)

        def progress(records: int, done: int) -> None:
            if done:
                bar.total = max(records, round(records * own_bytes / done))
            bar.update(records - bar.n)

        mine.mkdir(parents=True, exist_ok=True)
        with open(mine / "lines", "wb") as lines:
            stats = scan(pieces, Judge(index, minhasher, hasher), Verdicts(lines),
                         SpoolWriter(mine, minhasher.bands), progress)
        bar.close()
        info = {**dataclasses.asdict(stats), "eval": None if index is None else
                {"dir": str(fc.eval_dir), "hashes": len(index), "sets": index.stats}}
        (mine / "scan.json").write_text(json.dumps(info))
        ctx.logger.info("filter: process %d read %d records (%d past the per-record checks) in %.1fs, %.0f records/s",
                        me, stats.records, stats.survivors, stats.seconds, stats.records / max(stats.seconds, 1e-9))
        return info

    _step("filter read", barrier, read)
    phases.done("read")
    scans = [json.loads((work / f"p{p}" / "scan.json").read_text()) for p in range(workers)]
    spools = Spools([work / f"p{p}" for p in range(workers)], [s["survivors"] for s in scans], minhasher.num_perm)
    share = Share(me, workers, fc.rows_per_pass)
    with spools:
        _step("filter exact pass", barrier, lambda: exact_pass(spools, share, mine / "exact.bin"))
        phases.done("exact_pass")

        def near() -> None:
            exact = read_exact([work / f"p{p}" / "exact.bin" for p in range(workers)])
            flags = candidates(spools, exact)
            bar = tqdm(total=minhasher.bands, desc="filter: near-duplicate bands", unit="band", disable=me != 0)
            stats = near_pass(spools, flags, share, minhasher.bands, fc.bucket_cap, fc.near_dup_threshold,
                              sketch_margin(fc.near_dup_threshold, minhasher.num_perm), mine / "edges.bin",
                              lambda band: bar.update(1))
            bar.close()
            (mine / "near.json").write_text(json.dumps(dataclasses.asdict(stats)))

        _step("filter near pass", barrier, near)
        phases.done("near_pass")
    if me != 0:
        return {}
    return _finish(fc, ctx, files, work, workers, scans, minhasher, start, phases)


class _Phases:
    """Seconds and this process's peak resident memory (MB) at the end of each phase."""

    def __init__(self, start: float) -> None:
        self.start, self.last = start, start
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.last = round(now - self.last, 3), now
        self.peak_rss_mb[name] = peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: the high-water mark of its own address space
    (Linux `VmHWM`; `ru_maxrss` elsewhere, which on Linux also counts the parent's memory when the
    process was started by a large parent through vfork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _eval_index(fc: FilterConfig, ctx: StageContext, hasher: WordHasher) -> EvalIndex | None:
    if not fc.decontaminate:
        return None
    index = EvalIndex.from_dir(fc.eval_dir, fc.eval_fields, fc.ngram, hasher)
    for name, stats in index.stats.items():
        if stats["empty_questions"] == stats["questions"] and ctx.process_index == 0:
            ctx.logger.warning("filter: evaluation set %s has none of the fields %s", name, fc.eval_fields)
    return index


def _finish(fc: FilterConfig, ctx: StageContext, files: list[str], work: Path, workers: int, scans: list[dict],
            minhasher: MinHasher, start: float, phases: "_Phases") -> dict:
    """Process 0: decide the near duplicates, write the outputs and the report."""
    exact = read_exact([work / f"p{p}" / "exact.bin" for p in range(workers)])
    edges = read_edges([work / f"p{p}" / "edges.bin" for p in range(workers)])
    near = resolve_near(edges["i"], edges["j"], edges["jaccard"])
    near_stats = NearStats()
    for p in range(workers):
        near_stats.add(NearStats(**json.loads((work / f"p{p}" / "near.json").read_text())))
    total = sum(s["records"] for s in scans)
    bar = tqdm(total=total, desc="filter: write", unit="rec", disable=False, mininterval=1.0)
    stage_dir = ctx.stage_dir
    with atomic_write(artifacts.output(stage_dir, "filter.records")) as out, \
            atomic_write(artifacts.output(stage_dir, "filter.removed")) as removed:
        counts, outputs = merge([work / f"p{p}" / "lines" for p in range(workers)], exact, near, out, removed,
                                lambda n: bar.update(n - bar.n))
    bar.update(total - bar.n)
    bar.close()
    phases.done("write")
    elapsed = time.perf_counter() - start
    report = {
        "inputs": files,
        **counts.summary(),
        "eval_sets": scans[0]["eval"],
        "settings": {"ngram": fc.ngram, "shingle": fc.shingle, "near_dup_threshold": fc.near_dup_threshold,
                     "num_perm": fc.num_perm, "minhash_seed": fc.minhash_seed, "lsh_bands": minhasher.bands,
                     "lsh_rows": minhasher.rows, "bucket_cap": fc.bucket_cap, "decontaminate": fc.decontaminate,
                     "eval_fields": list(fc.eval_fields)},
        "dedup": {"exact_duplicates": len(exact), **dataclasses.asdict(near_stats)},
        "outputs": outputs,
        "processes": workers,
        "seconds": round(elapsed, 3),
        "phase_seconds": phases.seconds,
        "peak_rss_mb": phases.peak_rss_mb,
        "records_per_second": round(counts.total / elapsed, 1) if elapsed > 0 else None,
    }
    with atomic_write(artifacts.output(stage_dir, "filter.report")) as f:
        f.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    ctx.logger.info("filter: read %d, kept %d, removed %d %s in %.1fs with %d process(es) (%.0f records/s)",
                    report["read"], report["kept"], report["read"] - report["kept"], report["removed"], elapsed,
                    workers, report["records_per_second"] or 0)
    return report
