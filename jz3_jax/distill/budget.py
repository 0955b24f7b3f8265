"""Hard budgets on calls and tokens that count in-flight requests, so they are never exceeded.

Every HTTP attempt reserves one call and the most tokens it could cost (a bound on its prompt
tokens plus `max_tokens`) before it is sent; when it ends, the reservation is replaced by what it
actually cost. The sum of finished and in-flight attempts therefore never passes a limit. An
attempt that does not fit only because of in-flight reservations waits for them to settle; one
that cannot fit even then is refused, which ends the run (`stopped_by`).
"""

from __future__ import annotations

import threading


class Budget:
    """`max_calls` attempts and `max_tokens` tokens (0 = no limit), shared by the worker threads."""

    def __init__(self, max_calls: int = 0, max_tokens: int = 0):
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.calls = 0  # attempts started (finished or in flight)
        self.tokens = 0  # tokens of finished attempts
        self.reserved = 0  # token bounds of in-flight attempts
        self._changed = threading.Condition()

    def reserve(self, token_bound: int, stop: threading.Event | None = None) -> str | None:
        """Take one call and `token_bound` tokens; None when granted, else the budget that refuses
        (or "stopped" when `stop` was set while waiting for in-flight attempts to settle)."""
        with self._changed:
            while True:
                if self.max_calls and self.calls + 1 > self.max_calls:
                    return "max_calls"
                if self.max_tokens and self.tokens + token_bound > self.max_tokens:
                    return "max_tokens"
                if not self.max_tokens or self.tokens + self.reserved + token_bound <= self.max_tokens:
                    self.calls += 1
                    self.reserved += token_bound
                    return None
                if stop is not None and stop.is_set():
                    return "stopped"
                self._changed.wait(0.1)

    def settle(self, token_bound: int, used: int) -> None:
        """End an attempt that reserved `token_bound`: it cost `used` tokens."""
        with self._changed:
            self.reserved -= token_bound
            self.tokens += max(used, 0)
            self._changed.notify_all()

    def try_reserve(self, token_bound: int) -> str | None:
        """Like `reserve` without waiting (batch mode): None when granted; "wait" when only in-flight
        reservations stand in the way; else the budget that refuses for good."""
        with self._changed:
            if self.max_calls and self.calls + 1 > self.max_calls:
                return "max_calls"
            if self.max_tokens and self.tokens + token_bound > self.max_tokens:
                return "max_tokens"
            if self.max_tokens and self.tokens + self.reserved + token_bound > self.max_tokens:
                return "wait"
            self.calls += 1
            self.reserved += token_bound
            return None
