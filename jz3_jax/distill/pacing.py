"""A requests-per-minute limit: attempts start at least 60 / rpm seconds apart."""

from __future__ import annotations

import threading
import time


class Pacer:
    """Spaces out attempt starts across threads; `rpm` <= 0 means no limit."""

    def __init__(self, rpm: float):
        self.interval = 60.0 / rpm if rpm > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Block until this caller's slot; False when `stop` was set while waiting."""
        if not self.interval:
            return True
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        delay = slot - time.monotonic()
        if delay > 0:
            if stop is not None:
                return not stop.wait(delay)
            time.sleep(delay)
        return True
