"""The engine's rows-per-dispatch counters (`Engine.stats`), pure Python."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class DispatchCounters:
    """Decode dispatches and the rows they ran: over all of them, and over those run while
    requests waited (the engine full: its rows bounded by its row cap or pool, not by the requests left)."""

    dispatches: int = 0
    rows: int = 0
    most: int = 0
    full_dispatches: int = 0
    full_rows: int = 0

    def add(self, rows: int, full: bool) -> None:
        """Count one dispatch of `rows` rows; `full`: requests were waiting."""
        self.dispatches += 1
        self.rows += rows
        self.most = max(self.most, rows)
        self.full_dispatches += full
        self.full_rows += rows * full

    def stats(self) -> dict[str, float | int]:
        """`rows_running_mean` / `rows_running_max` (all dispatches), `rows_full_mean` and `dispatches_full`."""
        return dict(rows_running_mean=self.rows / self.dispatches if self.dispatches else 0.0,
                    rows_running_max=self.most,
                    rows_full_mean=self.full_rows / self.full_dispatches if self.full_dispatches else 0.0,
                    dispatches_full=self.full_dispatches)
