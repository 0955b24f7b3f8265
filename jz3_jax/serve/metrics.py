"""Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_RATE_WINDOW_S = 10.0
# The engine's counters (`Engine.stats`) shown as gauges `jz3_engine_<key>`, read at scrape time.
ENGINE_STATS = {
    "rows_running_mean": "rows per decode dispatch, mean since start",
    "rows_running_max": "rows per decode dispatch, most since start",
    "rows_full_mean": "rows per decode dispatch while requests waited (the engine full), mean since start",
    "generated_tokens": "tokens the engine sampled since start",
    "pages_in_use": "KV-cache pages held by running rows (paged engine)",
    "pages_total": "KV-cache pages in the pool, the scratch page excluded (paged engine)",
    "pages_cached": "pages holding a shared prompt prefix, held or idle (paged engine)",
    "prefix_hit_tokens": "prompt tokens found in the prefix cache since start (paged engine)",
    "prefill_tokens_computed": "prompt tokens prefilled since start (paged engine)",
    "prefill_tokens_total": "prompt tokens admitted since start, cached or computed (paged engine)",
    "preemptions": "rows preempted (pages freed, request requeued) since start (paged engine)",
}


def endpoint_label(path: str) -> str:
    """The `endpoint` label for a request path; anything unknown is `other` (a bounded label set)."""
    path = path.rstrip("/") or "/"
    if path in ENDPOINTS:
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


class Metrics:
    """The server's counters, gauges and histograms; `queue_depth`, `running_rows`, `in_flight` and
    the engine's counters (`engine_stats`, a dict as `Engine.stats` returns) are read at scrape time
    from the callables given."""

    def __init__(self, queue_depth: Callable[[], float], running_rows: Callable[[], float],
                 in_flight: Callable[[], float], engine_stats: Callable[[], dict] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("jz3_serve_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        Gauge("jz3_serve_queue_depth", "requests waiting for an engine row", registry=r).set_function(queue_depth)
        Gauge("jz3_serve_running_rows", "engine requests waiting or running in the engine",
              registry=r).set_function(running_rows)
        Gauge("jz3_serve_requests_in_flight", "HTTP requests being answered (this scrape included)",
              registry=r).set_function(in_flight)
        self.prompt_tokens = Counter("jz3_serve_prompt_tokens", "prompt tokens of requests sent to the engine",
                                     registry=r)
        self.generation_tokens = Counter("jz3_serve_generation_tokens", "tokens generated and delivered",
                                         registry=r)
        Gauge("jz3_serve_generation_tokens_per_second",
              f"tokens generated per second over the last {_RATE_WINDOW_S:g}s", registry=r).set_function(self._rate)
        self.time_to_first_token = Histogram("jz3_serve_time_to_first_token_seconds",
                                             "from request arrival to its first generated token",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("jz3_serve_request_latency_seconds", "from request arrival to the end of its answer",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        if engine_stats is not None:
            for key, help_text in ENGINE_STATS.items():
                Gauge(f"jz3_engine_{key}", help_text, registry=r).set_function(
                    lambda key=key: float(engine_stats().get(key, 0)))
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()  # scrapes read the window from prometheus' side too

    def generated(self, tokens: int) -> None:
        """Count `tokens` newly generated tokens (for the counter and the tokens/s window)."""
        if tokens:
            self.generation_tokens.inc(tokens)
            now = time.monotonic()
            with self._lock:
                self._recent.append((now, tokens))
                self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - _RATE_WINDOW_S:
            self._recent.popleft()

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(tokens for _, tokens in self._recent) / _RATE_WINDOW_S

    def answered(self, path: str, status: int, seconds: float) -> None:
        """Record one answered HTTP request."""
        label = endpoint_label(path)
        self.requests.labels(label, str(status)).inc()
        self.latency.labels(label).observe(seconds)

    def exposition(self) -> bytes:
        """The text format of every metric."""
        return generate_latest(self.registry)
