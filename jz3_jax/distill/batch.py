"""`distill.mode=batch`: the uncached requests go to the provider's Batch API at its discount.

Lifecycle: the requests are packed into input files (`distill.batch_max_requests` lines,
`distill.batch_max_bytes` bytes; a line larger than that alone goes in a file of its own, never
rejected), each line `custom_id` = the request hash and `body` = exactly the sync request, so the
cache is shared by both modes. Each file is recorded in the ledger (`batch_ledger.py`) before it is
uploaded and submitted; a rerun re-attaches to the open batches of the ledger (found by metadata
when the kill came between the create and its record) and never submits their requests again.
Batches are polled every `distill.batch_poll_s` seconds (growing x1.5 up to 8x while nothing
changes). A finished batch's lines go to the cache first (`batch_results.py`); failed, expired or
cancelled requests go into a later batch (at most `teacher.max_retries` more rounds), or with
`distill.batch_fallback=sync` are returned to be sent synchronously.

Budget: a request counts one call and reserves its token bound when it is submitted; a batch is
cut to what fits; the reservation settles to the reported usage when its answer is collected.
SIGTERM stops polling and leaves the batches running (the stage exits 143; a rerun re-attaches).
"""

from __future__ import annotations

import collections
import hashlib
import json
import time

from jz3_jax.distill.batch_api import ENDPOINT, TERMINAL, BatchAPI
from jz3_jax.distill.batch_ledger import BatchLedger, LedgerEntry
from jz3_jax.distill.batch_results import collect_lines
from jz3_jax.distill.requests import TeacherRequest


def input_line(request: TeacherRequest) -> bytes:
    """One batch input line for `request` (newline included)."""
    line = {"custom_id": request.hash, "method": "POST", "url": ENDPOINT, "body": request.body}
    return (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")


def pack(requests: list[TeacherRequest], max_requests: int, max_bytes: int) -> list[list[TeacherRequest]]:
    """Split `requests` into input files under both limits (an oversized line gets a file alone)."""
    files, current, size = [], [], 0
    for request in requests:
        n = len(input_line(request))
        if current and (len(current) >= max_requests or size + n > max_bytes):
            files.append(current)
            current, size = [], 0
        current.append(request)
        size += n
    if current:
        files.append(current)
    return files


def _sleep(seconds: float, should_stop) -> None:
    """Wait `seconds`, or less when a SIGTERM comes (a preemption's grace period is short)."""
    end = time.monotonic() + seconds
    while not should_stop() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


class BatchRunner:
    """Submits, polls and collects batches; answers land in `answers` as in sync mode."""

    def __init__(self, api: BatchAPI, ledger: BatchLedger, cache, budget, stats, answers: dict, dc, tc,
                 requests: list[TeacherRequest], logger, on_answer=lambda: None, on_poll=lambda s: None):
        self.api, self.ledger, self.cache, self.budget, self.stats = api, ledger, cache, budget, stats
        self.answers, self.dc, self.tc, self.logger = answers, dc, tc, logger
        self.by_hash = {r.hash: r for r in requests}
        self.on_answer, self.on_poll = on_answer, on_poll
        self.rounds: collections.Counter = collections.Counter()  # hash -> batches it was in, this run
        self.reserved: set[str] = set()  # hashes holding a budget reservation of this run
        self.summaries: dict[str, dict] = {}  # batch id -> what became of it
        self.fallback: list[TeacherRequest] = []

    def run(self, todo: list[TeacherRequest], should_stop) -> list[TeacherRequest]:
        """Answer `todo` through batches; the requests left for a sync fallback."""
        self.api.probe()
        active = self._reattach()
        covered = {h for e in active for h in e.hashes}
        pending = [r for r in todo if r.hash not in self.answers and r.hash not in covered]
        delay = self.dc.batch_poll_s
        while True:
            if should_stop():
                self.stats.stop("sigterm")
                break
            if pending and not self.stats.stopped_by:
                submitted, pending = self._submit(pending, bool(active))
                active += submitted
            if not active:
                break
            finished, retry = self._poll(active)
            active = [e for e in active if e not in finished]
            pending += retry
            self.on_poll(self.summaries)
            if finished:  # what failed goes into the next batch at once
                delay = self.dc.batch_poll_s
                continue
            _sleep(delay, should_stop)
            delay = min(delay * 1.5, self.dc.batch_poll_s * 8)
        return self.fallback

    def _reattach(self) -> list[LedgerEntry]:
        """The ledger's open batches, submitted ones first found again; never-submitted ones closed."""
        entries = self.ledger.open_entries()
        unsubmitted = [e for e in entries if e.batch_id is None]
        found = self.api.find({e.ledger_id for e in unsubmitted}, min((e.created_at for e in unsubmitted), default=0))
        active = []
        for entry in entries:
            if entry.batch_id is None and entry.ledger_id in found:
                self.ledger.record("submitted", entry.ledger_id, batch_id=found[entry.ledger_id], recovered=True)
            if entry.batch_id is None:  # killed before the create: nothing was sent
                self.ledger.record("collected", entry.ledger_id, status="not_submitted")
                continue
            self.logger.info("distill: re-attaching to batch %s (%d requests)", entry.batch_id, len(entry.hashes))
            self.rounds.update(entry.hashes)
            active.append(entry)
        return active

    def _submit(self, pending: list[TeacherRequest], waiting: bool) -> tuple[list[LedgerEntry], list]:
        """Reserve and submit what the budget allows of `pending`; (new entries, still pending)."""
        granted, rest = [], []
        for request in pending:
            refusal = self.budget.try_reserve(request.token_bound)
            if refusal is None:
                granted.append(request)
                self.reserved.add(request.hash)
            elif refusal == "wait" and (waiting or granted):
                rest.append(request)  # room comes back when an in-flight batch settles
            else:
                self.stats.stop(refusal if refusal != "wait" else "max_tokens")
                break
        entries = [self._submit_file(part) for part in
                   pack(granted, self.dc.batch_max_requests, self.dc.batch_max_bytes)]
        return entries, rest

    def _submit_file(self, requests: list[TeacherRequest]) -> LedgerEntry:
        """Record, upload and submit one input file."""
        data = b"".join(input_line(r) for r in requests)
        lid = self.ledger.next_id()
        hashes = [r.hash for r in requests]
        round_ = max(self.rounds[h] for h in hashes)
        self.ledger.record("intent", lid, hashes=hashes, input_sha256=hashlib.sha256(data).hexdigest(), round=round_)
        file_id = self.api.upload(f"jz3-{lid}.jsonl", data)
        self.ledger.record("uploaded", lid, file_id=file_id)
        batch_id = self.api.create(file_id, lid)
        self.ledger.record("submitted", lid, batch_id=batch_id)
        self.rounds.update(hashes)
        self.logger.info("distill: submitted batch %s: %d requests, %d bytes (round %d)", batch_id, len(hashes),
                         len(data), round_ + 1)
        self.summaries[batch_id] = {"batch_id": batch_id, "requests": len(hashes), "status": "submitted"}
        return self.ledger.entries[lid]

    def _poll(self, active: list[LedgerEntry]) -> tuple[list[LedgerEntry], list[TeacherRequest]]:
        """Retrieve each active batch; collect the finished ones; (finished, requests to retry)."""
        finished, retry = [], []
        for entry in active:
            batch = self.api.retrieve(entry.batch_id)
            summary = self.summaries.setdefault(entry.batch_id, {"batch_id": entry.batch_id,
                                                                 "requests": len(entry.hashes)})
            if batch is None:
                self.logger.warning("distill: the provider does not know batch %s (404); its requests are "
                                    "asked again", entry.batch_id)
                failed = self._close(entry, "unknown", set(), set(entry.hashes) - set(self.answers))
                for digest in failed:
                    self._count("unknown_batch", digest)
            elif batch.status in TERMINAL:
                if batch.status != "completed":
                    self.logger.warning("distill: batch %s ended %s%s", entry.batch_id, batch.status,
                                        f" ({batch.errors})" if getattr(batch, "errors", None) else "")
                failed = self._collect(entry, batch)
            else:
                counts = batch.request_counts
                summary.update(status=batch.status, completed=getattr(counts, "completed", 0),
                               failed=getattr(counts, "failed", 0))
                continue
            finished.append(entry)
            retry += self._route_failed(failed)
        return finished, retry

    def _collect(self, entry: LedgerEntry, batch) -> set[str]:
        """Every line of a finished batch into the cache; the hashes that failed."""
        texts = [self.api.content(fid) for fid in (batch.output_file_id, batch.error_file_id) if fid]
        owned = set(entry.hashes) - set(self.answers)
        answered, failed = collect_lines(texts, owned, batch.status, self._store, self._answered, self._count)
        return self._close(entry, batch.status, answered, failed)

    def _close(self, entry: LedgerEntry, status: str, answered: set[str], failed: set[str]) -> set[str]:
        """Settle the failed requests' reservations and mark the batch collected."""
        for digest in failed:
            self._settle(digest, 0)
        self.ledger.record("collected", entry.ledger_id, status=status, answered=len(answered), failed=len(failed))
        self.summaries[entry.batch_id].update(status=status, completed=len(answered), failed=len(failed))
        return failed

    def _store(self, digest: str, raw: str) -> None:
        request = self.by_hash.get(digest)
        self.cache.put(digest, request.body if request else {"custom_id": digest}, raw)

    def _answered(self, digest: str, raw: str, answer) -> None:
        self.answers[digest] = answer
        with self.stats.lock:
            self.stats.answered += 1
            self.stats.prompt_tokens += answer.prompt_tokens
            self.stats.completion_tokens += answer.completion_tokens
            self.stats.batch_prompt_tokens += answer.prompt_tokens
            self.stats.batch_completion_tokens += answer.completion_tokens
        request = self.by_hash.get(digest)
        bound = request.token_bound if request else 0
        self._settle(digest, answer.prompt_tokens + answer.completion_tokens if answer.usage_known else bound)
        self.on_answer()

    def _count(self, kind: str, digest: str | None) -> None:
        if kind == "malformed" and digest is not None:
            self.cache.discard_malformed(digest)
            self._settle(digest, self.by_hash[digest].token_bound if digest in self.by_hash else 0)
        with self.stats.lock:
            self.stats.failures[kind] += 1

    def _settle(self, digest: str, used: int) -> None:
        if digest in self.reserved:
            self.reserved.discard(digest)
            self.budget.settle(self.by_hash[digest].token_bound, used)

    def _route_failed(self, failed: set[str]) -> list[TeacherRequest]:
        """Failed requests of this run: another batch round, the sync fallback, or given up."""
        retry = []
        for digest in sorted(failed):
            request = self.by_hash.get(digest)
            if request is None or digest in self.answers:
                continue
            if self.dc.batch_fallback == "sync":
                self.fallback.append(request)
            elif self.rounds[digest] <= self.tc.max_retries:
                with self.stats.lock:
                    self.stats.retries += 1
                retry.append(request)
            else:
                with self.stats.lock:
                    self.stats.gave_up["batch"] += 1
        return retry
