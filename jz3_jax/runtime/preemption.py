"""SIGTERM (a preempted TPU VM or a stopped job): remember it, act on it at an agreed point.

A stage installs `TermFlag` for its loop and asks `should_stop(step)` at its step boundaries. In a
multi-process job the processes decide together every `sync_every` steps (one small collective per
decision, not per step), so every process stops at the same step even if the signal reached them
at different times. Exit code 143 (128 + SIGTERM) says "preempted; rerun the same command".
"""

from __future__ import annotations

import signal

import jax
import numpy as np

PREEMPTED_EXIT_CODE = 143


class Preempted(SystemExit):
    """Raised once a stage has saved its work after a SIGTERM; the launcher exits 143."""

    def __init__(self, step: int | None = None):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


class TermFlag:
    """Remembers a SIGTERM; `should_stop` answers the same in every process."""

    def __init__(self, sync_every: int = 1):
        if sync_every < 1:
            raise ValueError(f"sync_every must be at least 1, got {sync_every}")
        self.raised = False
        self.sync_every = sync_every
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def should_stop(self, step: int) -> bool:
        """Whether to stop before `step`: this process's flag alone in a single-process run; in a
        multi-process run, any process's flag, checked only at multiples of `sync_every`."""
        if jax.process_count() == 1:
            return self.raised
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils

        return bool(multihost_utils.process_allgather(np.asarray(self.raised)).any())

    def restore(self) -> None:
        """Put back the SIGTERM handler that was there before."""
        signal.signal(signal.SIGTERM, self._previous)

    def __enter__(self) -> "TermFlag":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
