"""The `distill` stage: the teacher writes a problem and solution for each (snippet, level, kind).

Reads snippets (`distill.snippets`, default `RUN_DIR/select/selected.jsonl` when it exists, else
`RUN_DIR/corpus/snippets.jsonl`), renders each with the prompt library (`distill.levels`,
`level_policy`, `kinds`), and asks the teacher (`teacher.*`) for every request that has no answer
in the cache (see `cache.py`, `dispatch.py`). Then, from the cache alone, it writes to
`RUN_DIR/distill/`:

- `kd.jsonl`: one record per accepted answer: `id` (snippet:level:kind), `input` (the synthesis
  prompt), `output` (problem, solution header, solution), `snippet_id`, `source`, `level`, `kind`,
  `teacher_model`, `sampling`, `usage`, `finish_reason`, `request_hash`; then the records of the
  `distill.include` files not already present. It is the `sft` stage's `data.train_path`.
- `rejected.jsonl`: answers that failed validation, with `reason` and the raw `answer`.
- `report.json`: `requests`, `calls`, `cache_hits`, `retries`, `failures` by kind, `gave_up`,
  `rejected` by reason, `records`, `unfinished`, `prompt_tokens`, `completion_tokens`,
  `cost_estimate`, `mode`, `batches`, `stopped_by` (null, "max_calls", "max_tokens" or "sigterm").

`distill.mode=batch` sends the uncached requests through the provider's Batch API instead (see
`batch.py`); the outputs are the same, from the same cache.

The outputs are written (atomically) also when the run stops on a budget or a SIGTERM (exit 143);
a run that fails on a teacher error (bad key, unknown model, unreachable: exit 2) rewrites them only
if it was paid for new answers, so a failed run never empties the dataset of an earlier one.
Only process 0 works; the others return at once.
"""

from __future__ import annotations

import collections
import json
import os
from typing import TYPE_CHECKING

from tqdm import tqdm

from jz3_jax.distill.answers import Answer, MalformedBody, parse_body
from jz3_jax.distill.budget import Budget
from jz3_jax.distill.cache import AnswerCache
from jz3_jax.distill.client import TeacherClient
from jz3_jax.distill.dispatch import Dispatcher, RunStats
from jz3_jax.errors import DistillError
from jz3_jax.distill.pacing import Pacer
from jz3_jax.distill.requests import TeacherRequest, build_requests
from jz3_jax.prompts.snippets import read_snippets
from jz3_jax.distill.validate import validate
from jz3_jax.prompts.plan import PromptPlan
from jz3_jax.records.jsonl import read_lines, write_lines
from jz3_jax.distill.spec import DistillSpec
from jz3_jax.runtime import artifacts
from jz3_jax.runtime.paths import as_path, atomic_write
from jz3_jax.runtime.preemption import Preempted, TermFlag

if TYPE_CHECKING:
    from jz3_jax.stages import StageContext


def default_snippets(run_dir) -> str:
    """The selected snippets when the select stage ran, else the corpus stage's."""
    selected = artifacts.locate(run_dir, "select.selected")
    return str(selected if selected.exists() else artifacts.locate(run_dir, "corpus.snippets"))


def check_settings(dc, tc) -> None:
    """Raise DistillError naming the first `distill.*` / `teacher.*` value that cannot work."""
    checks = [
        (dc.num_snippets >= 0, f"distill.num_snippets must be >= 0 (0 = all), got {dc.num_snippets}"),
        (dc.concurrency >= 1, f"distill.concurrency must be >= 1, got {dc.concurrency}"),
        (dc.requests_per_minute >= 0, f"distill.requests_per_minute must be >= 0, got {dc.requests_per_minute}"),
        (dc.max_calls >= 0, f"distill.max_calls must be >= 0 (0 = no limit), got {dc.max_calls}"),
        (dc.max_tokens >= 0, f"distill.max_tokens must be >= 0 (0 = no limit), got {dc.max_tokens}"),
        (tc.max_tokens >= 1, f"teacher.max_tokens must be >= 1, got {tc.max_tokens}"),
        (tc.timeout_s > 0, f"teacher.timeout_s must be > 0, got {tc.timeout_s}"),
        (tc.max_retries >= 0, f"teacher.max_retries must be >= 0, got {tc.max_retries}"),
        (tc.backoff_s >= 0 and tc.max_backoff_s >= 0, "teacher.backoff_s and teacher.max_backoff_s must be >= 0"),
        (bool(tc.model), "teacher.model is empty"),
        (bool(tc.base_url), "teacher.base_url is empty"),
        (dc.mode in ("sync", "batch"), f"distill.mode must be sync or batch, got {dc.mode!r}"),
        (dc.batch_max_requests >= 1, f"distill.batch_max_requests must be >= 1, got {dc.batch_max_requests}"),
        (dc.batch_max_bytes >= 1, f"distill.batch_max_bytes must be >= 1, got {dc.batch_max_bytes}"),
        (dc.batch_poll_s > 0, f"distill.batch_poll_s must be > 0, got {dc.batch_poll_s}"),
        (dc.batch_fallback in ("batch", "sync"), f"distill.batch_fallback must be batch or sync, got "
                                                 f"{dc.batch_fallback!r}"),
        (0 <= tc.batch_discount <= 1, f"teacher.batch_discount must be in [0, 1], got {tc.batch_discount}"),
    ]
    for ok, message in checks:
        if not ok:
            raise DistillError(message)


def run(spec: DistillSpec, ctx: StageContext) -> dict:
    """Ask the teacher for every uncached request, then write kd.jsonl, rejected.jsonl, report.json."""
    dc, tc = spec.distill, spec.teacher
    check_settings(dc, tc)
    plan = PromptPlan.from_config("distill", dc, spec.seed)
    if ctx.process_index != 0:
        return {}
    for name in dc.include:  # checked now: the outputs are written even when the run fails later
        if not as_path(name).exists():
            raise DistillError(f"distill.include: {name!r} does not exist")
    snippets_path = as_path(dc.snippets or default_snippets(ctx.run_dir))
    snippets = read_snippets(snippets_path)
    if dc.num_snippets:
        snippets = snippets[:dc.num_snippets]
    requests = build_requests(snippets, plan, tc)
    cache = AnswerCache(as_path(dc.cache_dir) if dc.cache_dir else ctx.stage_dir / "cache")
    answers = _cached_answers(cache, requests)
    todo = [r for r in requests if r.hash not in answers]
    stats = RunStats()
    budget = Budget(dc.max_calls, dc.max_tokens)
    ctx.logger.info("distill: %d snippets from %s, %d requests, %d answered in the cache, %d to ask %s at %s",
                    len(snippets), snippets_path, len(requests), len(requests) - len(todo), len(todo), tc.model,
                    tc.base_url)
    cache_hits = len(requests) - len(todo)
    bar = tqdm(total=len(requests), initial=len(requests) - len(todo), desc="distill", unit="req",
               disable=not todo)

    def progress() -> None:
        bar.update(1)
        spend = _spend(tc, stats)
        bar.set_postfix(calls=budget.calls, hits=cache_hits, fail=sum(stats.failures.values()),
                        spend=f"${spend:.4f}" if spend else f"{stats.prompt_tokens + stats.completion_tokens}tok",
                        refresh=False)

    term = TermFlag()
    batches: dict[str, dict] = {}
    try:
        if todo:
            key = _api_key(tc.api_key_env)
            if dc.mode == "batch":
                todo = _run_batches(ctx, spec, requests, todo, cache, budget, answers, stats, key, batches, bar,
                                    lambda: term.raised)
            if todo and not stats.stopped_by:
                client = TeacherClient(tc.base_url, key, tc.timeout_s)
                Dispatcher(client, cache, budget, Pacer(dc.requests_per_minute), tc, dc.concurrency, answers, stats,
                           progress, spec.seed).run(todo, lambda: term.raised)
    except BaseException:
        # A run that failed (bad key, unknown model, unreachable) keeps the outputs of the last run
        # unless it was paid for new answers: those go into the outputs at once.
        if stats.answered:
            _write_outputs(ctx, spec, requests, answers, stats, budget, cache_hits, batches)
        raise
    finally:
        bar.close()
        term.restore()
    report = _write_outputs(ctx, spec, requests, answers, stats, budget, cache_hits, batches)
    ctx.logger.info("distill: %d calls, %d cache hits, %d records, %d rejected, %d unfinished%s -> %s",
                    report["calls"], report["cache_hits"], report["records"], sum(report["rejected"].values()),
                    report["unfinished"], f", stopped by {report['stopped_by']}" if report["stopped_by"] else "",
                    artifacts.output(ctx.stage_dir, "distill.kd"))
    if report["stopped_by"] == "sigterm":
        raise Preempted()
    return report


def _api_key(name: str) -> str:
    key = os.environ.get(name)
    if not key:
        raise DistillError(f"the environment variable {name!r} (teacher.api_key_env) holds no API key; set it "
                           "(any value for a local server that does not check keys)")
    return key


def _cached_answers(cache: AnswerCache, requests: list[TeacherRequest]) -> dict[str, Answer]:
    """The cached answers of this run's requests; a malformed entry (a run killed between storing and
    checking it) is moved aside so the request is asked again."""
    known = cache.hashes()
    answers = {}
    for request in requests:
        if request.hash in known:
            try:
                answers[request.hash] = parse_body(cache.get(request.hash))
            except MalformedBody:
                cache.discard_malformed(request.hash)
    return answers


def _cost(tc, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * tc.price_input_per_1m + completion_tokens * tc.price_output_per_1m) / 1e6


def _spend(tc, stats: RunStats) -> float:
    """This run's cost: sync answers at the listed prices, batch answers at `teacher.batch_discount`."""
    batch = _cost(tc, stats.batch_prompt_tokens, stats.batch_completion_tokens)
    return _cost(tc, stats.prompt_tokens, stats.completion_tokens) - batch + batch * tc.batch_discount


def _run_batches(ctx, spec, requests, todo, cache, budget, answers, stats, key, batches, bar, should_stop):
    """Batch mode (see batch.py); the requests left for the sync fallback."""
    from jz3_jax.distill.batch import BatchRunner
    from jz3_jax.distill.batch_api import BatchAPI
    from jz3_jax.distill.batch_ledger import BatchLedger

    def on_poll(summaries: dict) -> None:
        batches.update(summaries)
        bar.set_postfix_str("; ".join(f"{b['batch_id'][-8:]}: {b.get('status', '?')} {b.get('completed', 0)}ok "
                                      f"{b.get('failed', 0)}fail" for b in summaries.values()
                                      if b.get("status") not in ("completed", "unknown"))
                            + f" spend=${_spend(spec.teacher, stats):.4f}")

    runner = BatchRunner(BatchAPI(spec.teacher, key, spec.seed), BatchLedger(ctx.stage_dir / "batches.jsonl"), cache,
                         budget, stats, answers, spec.distill, spec.teacher, requests, ctx.logger,
                         on_answer=lambda: bar.update(1), on_poll=on_poll)
    try:
        return runner.run(todo, should_stop)
    finally:
        batches.update(runner.summaries)


def _write_outputs(ctx, spec, requests, answers, stats: RunStats, budget: Budget, cache_hits: int,
                   batches: dict) -> dict:
    dc, tc = spec.distill, spec.teacher
    sampling = {"temperature": tc.temperature, "top_p": tc.top_p, "max_tokens": tc.max_tokens, "stop": list(tc.stop)}
    records, rejected, reasons = [], [], collections.Counter()
    for request in requests:
        answer = answers.get(request.hash)
        if answer is None:
            continue
        p = request.prompt
        provenance = {"id": p.id, "snippet_id": p.snippet_id, "source": p.source, "level": p.level, "kind": p.kind,
                      "teacher_model": tc.model, "teacher_response_model": answer.model, "sampling": sampling,
                      "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
                      "finish_reason": answer.finish_reason, "request_hash": request.hash}
        output, reason = validate(answer, p.kind, dc.min_chars, dc.max_chars, dc.require_answer)
        if output is None:
            reasons[reason] += 1
            rejected.append({**provenance, "reason": reason, "input": p.prompt, "answer": answer.content})
        else:
            records.append({"input": p.prompt, "output": output, **provenance})
    included = _included(dc.include, records)
    write_lines(artifacts.output(ctx.stage_dir, "distill.kd"), records + included)
    write_lines(ctx.stage_dir / "rejected.jsonl", rejected)
    report = {
        "requests": len(requests), "calls": budget.calls, "cache_hits": cache_hits, "retries": stats.retries,
        "failures": dict(stats.failures), "gave_up": dict(stats.gave_up),
        "rejected": dict(sorted(reasons.items())), "records": len(records), "included": len(included),
        "unfinished": sum(1 for r in requests if r.hash not in answers),
        "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
        "cost_estimate": round(_spend(tc, stats), 6), "mode": dc.mode, "batches": list(batches.values()),
        "stopped_by": stats.stopped_by, "teacher": {"base_url": tc.base_url, "model": tc.model},
    }
    with atomic_write(artifacts.output(ctx.stage_dir, "distill.report")) as f:
        json.dump(report, f, indent=2)
    return report


def _included(paths: list[str], records: list[dict]) -> list[dict]:
    """Records of earlier kd.jsonl files (e.g. the first distill round) not already in `records`."""
    seen = {r["request_hash"] for r in records} | {(r["input"], r["output"]) for r in records}
    extra = []
    for line in read_lines(paths, error=DistillError, validate=_is_example):
        record = line.record
        keys = [k for k in (record.get("request_hash"), (record["input"], record["output"])) if k is not None]
        if any(k in seen for k in keys):
            continue
        seen.update(keys)
        extra.append(record)
    return extra


def _is_example(record: dict) -> str | None:
    if isinstance(record.get("input"), str) and isinstance(record.get("output"), str):
        return None
    return "expected an object with string 'input' and 'output'"
