"""The one thread that owns the engine: jobs in through a bounded queue, events out per job.

The engine is not thread-safe, so the HTTP side never touches it: it puts a `Job` (one HTTP
request, `n` engine requests) on the worker's bounded inbox and reads that job's own event queue
(`bridge.AsyncJob` delivers to the asyncio event loop instead).
The inbox is the waiting room: the worker moves jobs into the engine only while it has free rows,
so a full inbox means "too many requests waiting" (HTTP 429). A failure of one job, or of one
engine step, is reported to the jobs concerned and the worker carries on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from jz3_jax.decoding.engine import Engine, Event, Generation, Request, RequestError, TokenLogprob
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.serve.protocol import ApiError


class Job:
    """One HTTP request's engine requests (one per choice) and the queue their events arrive on.

    Every choice continues `prompt_ids`, or its own entry of `prompts` (batched prompts). With
    `echo_logprobs` N the worker first scores each choice's prompt (`Engine.score`, top N, at the
    choice's temperature) into `prompt_logprobs`, before any event; with `generate` False (an echo
    with max_tokens=0) it then finishes every choice with no new token instead of running it.

    A reader thread reads with `next_event`; the worker thread writes through the requests'
    `on_event` and `fail`, both ending in `_put` (what a subclass overrides to deliver elsewhere).
    `cancel` (client gone) makes the worker drop the job's further events and free its rows.
    """

    def __init__(self, prompt_ids: list[int], params: list[SamplingParams], *, prompts: list[list[int]] | None = None,
                 echo_logprobs: int | None = None, generate: bool = True):
        prompts = prompts if prompts is not None else [prompt_ids] * len(params)
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts for {len(params)} choices")
        self.requests = [Request(prompt, p, id=i, on_event=self._deliver)
                         for i, (prompt, p) in enumerate(zip(prompts, params))]
        self.echo_logprobs = echo_logprobs
        self.generate = generate
        # written by the worker before the job's first event; read by the reader after it
        self.prompt_logprobs: list[list[TokenLogprob]] | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._unfinished = len(self.requests)  # written by the worker thread only
        self.cancelled = threading.Event()

    @property
    def finished(self) -> bool:
        """Whether every request of the job has finished (as seen by the worker thread)."""
        return self._unfinished == 0

    def _deliver(self, event: Event) -> None:
        if event.finished is not None:
            self._unfinished -= 1
        if not self.cancelled.is_set():
            self._put(event)

    def _put(self, item: Event | ApiError) -> None:
        """Hand an event or the job's error to its reader (called on the worker thread)."""
        self._events.put(item)

    def fail(self, error: ApiError) -> None:
        """End the job with `error` (raised by the reader's next `next_event`)."""
        self._put(error)

    def cancel(self) -> None:
        """The client is gone: stop queueing events; the worker frees the job's rows."""
        self.cancelled.set()

    def next_event(self, timeout: float) -> Event:
        """The next event of any of the job's requests; raises the job's ApiError, or queue.Empty
        after `timeout` seconds."""
        item = self._events.get(timeout=max(timeout, 0.0))
        if isinstance(item, ApiError):
            raise item
        return item


class Worker(threading.Thread):
    """Owns `engine`: admits jobs from a bounded inbox into free rows and steps the engine.

    Args:
        engine: the engine (only this thread calls it once started).
        max_queue: jobs that may wait for a row; `submit` raises ApiError 429 beyond that.
        logger: where step failures are reported.
    """

    def __init__(self, engine: Engine, max_queue: int, logger: logging.Logger | None = None):
        super().__init__(name="serve-engine", daemon=True)
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.engine = engine
        self.logger = logger or logging.getLogger("jz3_jax")
        self._inbox: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._live: dict[int, Job] = {}  # id(job) -> job, for jobs inside the engine
        self._stopping = threading.Event()
        self._inbox_lock = threading.Lock()  # no job enters the inbox after the final drain
        self.completed = 0  # engine requests finished (for the shutdown summary)
        self.running_rows = 0  # engine requests waiting or running, as of the last loop (for metrics)
        self.failed_steps = 0

    # --- request side -----------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue `job`; ApiError 429 when `max_queue` jobs are already waiting, 503 when stopping."""
        with self._inbox_lock:
            if self._stopping.is_set() or not self.is_alive():
                raise ApiError(503, "the server is shutting down", "server_error", code="unavailable")
            try:
                self._inbox.put_nowait(job)
            except queue.Full:
                raise ApiError(429, f"too many requests waiting (serve.max_queue={self._inbox.maxsize}); retry later",
                               "rate_limit_error", code="rate_limit_exceeded") from None

    @property
    def waiting(self) -> int:
        """Jobs waiting for a row (approximate: read without the worker's lock)."""
        return self._inbox.qsize()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the current step; waiting and running jobs fail with 503."""
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    # --- worker thread --------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._admit()
                self._drop_cancelled()
                if self.engine.pending:
                    self._step()
                self.running_rows = self.engine.pending
            except Exception:  # never let the worker die: a dead worker hangs every later request
                self.logger.exception("serve: unexpected error in the engine worker")
                time.sleep(0.1)
        shutting_down = ApiError(503, "the server is shutting down", "server_error", code="unavailable")
        for job in list(self._live.values()):
            job.fail(shutting_down)
        with self._inbox_lock:
            while True:
                try:
                    self._inbox.get_nowait().fail(shutting_down)
                except queue.Empty:
                    break

    def _admit(self) -> None:
        """Move waiting jobs into the engine while it has free rows (block briefly when idle)."""
        block = self.engine.pending == 0
        while self.engine.pending < self.engine.max_batch:
            try:
                job = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if job.cancelled.is_set():
                continue
            try:
                if job.generate:
                    for request in job.requests:
                        self.engine.validate(request)
                if job.echo_logprobs is not None:
                    job.prompt_logprobs = self._score(job)
                if not job.generate:
                    for request in job.requests:
                        prompt = list(request.prompt_ids)
                        done = Generation(request.id, prompt, [], "", "length", seed=0, logprobs=[])
                        job._deliver(Event(request, [], "", done, []))
                    self.completed += len(job.requests)
                    continue
                for request in job.requests:
                    self.engine.submit(request)
            except RequestError as error:
                job.fail(ApiError(400, str(error)))
                continue
            except Exception as error:  # one bad job must not stop the others
                self.logger.exception("serve: could not start a request")
                job.fail(ApiError(500, f"could not start the request: {error}", "server_error"))
                continue
            self._live[id(job)] = job

    def _score(self, job: Job) -> list[list[TokenLogprob]]:
        """Each choice's prompt scored (once per distinct prompt and temperature)."""
        scored: dict[tuple, list[TokenLogprob]] = {}
        out = []
        for request in job.requests:
            key = (tuple(request.prompt_ids), request.params.temperature)
            if key not in scored:
                scored[key] = self.engine.score(request.prompt_ids, job.echo_logprobs, request.params.temperature)
            out.append(scored[key])
        return out

    def _drop_cancelled(self) -> None:
        """Free the engine rows of jobs whose client went away."""
        for key, job in list(self._live.items()):
            if job.cancelled.is_set():
                for request in job.requests:
                    self.engine.cancel(request)
                del self._live[key]

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as error:
            self.failed_steps += 1
            self.logger.exception("serve: engine step failed; failing the %d running request(s)", len(self._live))
            failure = ApiError(500, f"the engine failed: {error}", "server_error")
            for job in self._live.values():
                job.fail(failure)
            self._live.clear()
            self._drain_engine()
            return
        self.completed += sum(event.finished is not None for event in events)
        for key in [key for key, job in self._live.items() if job.finished]:
            del self._live[key]

    def _drain_engine(self) -> None:
        """After a failed step, forget the engine's requests (their jobs were already failed) and
        give it a fresh device state."""
        self.engine.reset()
