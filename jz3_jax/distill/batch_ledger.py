"""`RUN_DIR/distill/batches.jsonl`: what was sent to the Batch API, recorded before it is sent.

One JSON line per event, appended (the file is rewritten whole: temp file + fsync + rename, so a
kill leaves the old ledger or the new one, never half a line) before the step it announces:

- `intent`: `ledger_id`, the request hashes of one batch input file and the file's SHA-256, before
  the upload. A run killed after it re-uploads (a duplicate file costs nothing).
- `uploaded`: `ledger_id`, `file_id`, after the upload.
- `submitted`: `ledger_id`, `batch_id`, after `batches.create`. The batch carries
  `metadata={"jz3_ledger": ledger_id}`, so a run killed between the create and this line finds the
  batch by listing the provider's batches instead of submitting it again.
- `collected`: `ledger_id`, `status`, once every answer of the batch is in the cache.
"""

from __future__ import annotations

import dataclasses
import json
import time

from jz3_jax.runtime.paths import atomic_write


@dataclasses.dataclass
class LedgerEntry:
    """One batch input file and what became of it."""

    ledger_id: str
    hashes: list[str]
    input_sha256: str
    round: int = 0
    created_at: float = 0.0  # when the intent was recorded
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # set once collected

    @property
    def collected(self) -> bool:
        return self.status is not None


class BatchLedger:
    """The batches of one run directory, folded from its event lines."""

    def __init__(self, path):
        self.path = path
        self.lines: list[str] = []
        self.entries: dict[str, LedgerEntry] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self.lines.append(line)
                    self._fold(json.loads(line))

    def _fold(self, event: dict) -> None:
        kind, lid = event["event"], event["ledger_id"]
        if kind == "intent":
            self.entries[lid] = LedgerEntry(lid, list(event["hashes"]), event["input_sha256"], event.get("round", 0),
                                            event.get("at", 0.0))
            return
        entry = self.entries[lid]
        if kind == "uploaded":
            entry.file_id = event["file_id"]
        elif kind == "submitted":
            entry.batch_id = event["batch_id"]
        elif kind == "collected":
            entry.status = event["status"]

    def record(self, event: str, ledger_id: str, **fields) -> None:
        """Append one event durably, then apply it."""
        data = {"event": event, "ledger_id": ledger_id, "at": round(time.time(), 3), **fields}
        line = json.dumps(data, ensure_ascii=False)
        with atomic_write(self.path) as f:
            for old in self.lines + [line]:
                f.write(old + "\n")
        self.lines.append(line)
        self._fold(data)

    def open_entries(self) -> list[LedgerEntry]:
        """Batches recorded but not yet collected (a killed or preempted run's), oldest first."""
        return [e for e in self.entries.values() if not e.collected]

    def next_id(self) -> str:
        """A ledger id no entry has (unique across reruns in the same run directory)."""
        return f"{time.strftime('%Y%m%dT%H%M%S')}-{len(self.entries):05d}-{time.time_ns() % 10**6:06d}"
