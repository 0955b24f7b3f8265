"""Send the uncached requests: worker threads, budget, pacing, retries, cache-first answers.

For each request a worker tries up to `teacher.max_retries + 1` attempts. Before each attempt it
waits for its requests-per-minute slot and reserves one call and the attempt's token bound from
the budget (see `budget.py`; a refusal stops the run: `stopped_by`). A 200 body goes into the cache before it is
parsed; a body that is not a chat completion is moved aside and retried as "malformed". Failures
are counted by kind; retries wait an exponential back-off with jitter, at least the Retry-After.
A request whose attempts all fail is left unanswered (a rerun asks again), except connection
failures, which end the run with a TeacherError (the endpoint is unreachable). A TeacherError
(bad key, unknown model) stops every worker; the caller writes the outputs, then re-raises it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import random
import threading

from jz3_jax.distill.answers import Answer, MalformedBody, parse_body
from jz3_jax.distill.budget import Budget
from jz3_jax.distill.cache import AnswerCache
from jz3_jax.distill.client import RETRYABLE, TeacherClient, backoff_delay
from jz3_jax.errors import TeacherError
from jz3_jax.distill.pacing import Pacer
from jz3_jax.distill.requests import TeacherRequest


class RunStats:
    """This run's counters (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.retries = 0
        self.failures = collections.Counter({kind: 0 for kind in RETRYABLE})
        self.gave_up = collections.Counter()
        self.answered = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.batch_prompt_tokens = 0  # the part of the tokens paid at the batch discount
        self.batch_completion_tokens = 0
        self.stopped_by: str | None = None

    def stop(self, reason: str) -> None:
        with self.lock:
            self.stopped_by = self.stopped_by or reason


class Dispatcher:
    """Runs the requests not in the cache; answers land in `answers` (hash -> Answer)."""

    def __init__(self, client: TeacherClient, cache: AnswerCache, budget: Budget, pacer: Pacer, teacher,
                 concurrency: int, answers: dict[str, Answer], stats: RunStats, on_done=None, seed: int = 0):
        self.client, self.cache, self.budget, self.pacer = client, cache, budget, pacer
        self.teacher = teacher
        self.concurrency = concurrency
        self.answers = answers
        self.stats = stats
        self.on_done = on_done or (lambda: None)
        self.stop = threading.Event()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def run(self, requests: list[TeacherRequest], should_stop=lambda: False) -> None:
        """Send every request (or stop early); raises the first TeacherError after the workers end."""
        fatal: BaseException | None = None
        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="distill") as pool:
            pending = {pool.submit(self._one, request) for request in requests}
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.25,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    if not future.cancelled() and future.exception() is not None and fatal is None:
                        fatal = future.exception()
                        self.stop.set()
                if should_stop():
                    self.stats.stop("sigterm")
                    self.stop.set()
                if self.stop.is_set():
                    for future in pending:
                        future.cancel()
        if fatal is not None:
            raise fatal

    def _one(self, request: TeacherRequest) -> None:
        kind, retry_after = None, None
        try:
            for attempt in range(self.teacher.max_retries + 1):
                if attempt:
                    with self._rng_lock:
                        delay = backoff_delay(attempt - 1, self.teacher.backoff_s, self.teacher.max_backoff_s,
                                              retry_after, self._rng)
                    if self.stop.wait(delay):
                        return
                if self.stop.is_set() or not self.pacer.wait(self.stop):
                    return
                refusal = self.budget.reserve(request.token_bound, self.stop)
                if refusal:
                    if refusal != "stopped":
                        self.stats.stop(refusal)
                        self.stop.set()
                    return
                if attempt:
                    with self.stats.lock:
                        self.stats.retries += 1  # counted once the retry is really sent
                kind, retry_after = self._attempt(request)
                if kind == "ok":
                    return
                with self.stats.lock:
                    self.stats.failures[kind] += 1
            with self.stats.lock:
                self.stats.gave_up[kind] += 1
            if kind == "connection":
                raise TeacherError(f"cannot reach the teacher at {self.client.base_url} after "
                                   f"{self.teacher.max_retries + 1} attempts; check teacher.base_url and the network")
        finally:
            self.on_done()

    def _attempt(self, request: TeacherRequest) -> tuple[str, float | None]:
        """One reserved attempt: ("ok" | a failure kind, the server's Retry-After)."""
        bound, used = request.token_bound, 0
        try:
            result = self.client.attempt(request.body)
            if result.kind != "ok":
                used = bound if result.kind == "timeout" else 0  # a timed-out request may still be billed
                return result.kind, result.retry_after
            self.cache.put(request.hash, request.body, result.raw)  # before anything else happens to it
            try:
                answer = parse_body(result.raw)
            except MalformedBody:
                self.cache.discard_malformed(request.hash)
                used = bound
                return "malformed", None
            used = answer.prompt_tokens + answer.completion_tokens if answer.usage_known else bound
            self.answers[request.hash] = answer
            with self.stats.lock:
                self.stats.answered += 1
                self.stats.prompt_tokens += answer.prompt_tokens
                self.stats.completion_tokens += answer.completion_tokens
            return "ok", None
        finally:
            self.budget.settle(bound, used)
