"""Counting XLA compilations (warm-up logs, and tests that no request compiles after warm-up).

JAX records a `/jax/core/compile/backend_compile_duration` event for every program it hands to
the XLA backend (a persistent-cache hit records one too: the program was still missing in this
process). The counter listens to that event through `jax.monitoring`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileLog:
    """The programs compiled while a `count_compiles()` block was open (by any thread)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.seconds = 0.0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.names)

    def _record(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            with self._lock:
                self.names.append(str(kwargs.get("fun_name", "?")))
                self.seconds += duration


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileLog]:
    """`with count_compiles() as log:` ... `log.count` programs were compiled inside the block."""
    log = CompileLog()
    jax.monitoring.register_event_duration_secs_listener(log._record)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(log._record)
