"""The last pass of `filter` (process 0): the processes' `lines` files, in process order, become
`records.jsonl` and `removed.jsonl`, with the duplicates found by the deduplication passes removed.

Streaming: survivors are numbered in record order as they are read; the exact and the near
duplicates (arrays sorted by number) are looked up as the stream
passes them, and the ids of the records they duplicate are remembered when the stream passes those
(always earlier). Memory holds the duplicate tables, not the records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import IO, Callable

import numpy as np

from jz3_jax.synth.parse import KINDS, MALFORMED_REASONS

REASONS = ("truncated", "malformed", "contaminated", "exact_duplicate", "near_duplicate")


class Counts:
    """Counts read / kept by kind and removed by reason (with sub-counts), for the report."""

    def __init__(self) -> None:
        self.total = self.total_kept = 0
        self.removed_by = dict.fromkeys(REASONS, 0)
        self.malformed_by = dict.fromkeys(MALFORMED_REASONS, 0)
        self.contaminated_by: dict[str, int] = {}
        self.by_kind = {kind: {"read": 0, "kept": 0} for kind in KINDS}

    def kept(self, kind: str) -> None:
        """Count a kept record."""
        self.total += 1
        self.total_kept += 1
        self.by_kind[kind]["read"] += 1
        self.by_kind[kind]["kept"] += 1

    def removed(self, kind: str, verdict: dict) -> None:
        """Count a removed record under its reason."""
        self.total += 1
        self.by_kind[kind]["read"] += 1
        self.removed_by[verdict["reason"]] += 1
        if verdict["reason"] == "malformed":
            self.malformed_by[verdict["detail"]] += 1
        elif verdict["reason"] == "contaminated":
            self.contaminated_by[verdict["set"]] = self.contaminated_by.get(verdict["set"], 0) + 1

    def summary(self) -> dict:
        """The counts as the report has them."""
        return {"read": self.total, "kept": self.total_kept, "removed": dict(self.removed_by),
                "malformed_by_reason": dict(self.malformed_by),
                "contaminated_by_set": dict(sorted(self.contaminated_by.items())), "by_kind": self.by_kind}


@dataclasses.dataclass
class _Writer:
    handle: IO[str]
    digest: "hashlib._Hash" = dataclasses.field(default_factory=hashlib.sha256)
    rows: int = 0

    def write(self, line: str) -> None:
        """Write one output line and hash it."""
        self.handle.write(line)
        self.digest.update(line.encode())
        self.rows += 1


def merge(lines: list[Path], exact: np.ndarray, near: tuple[np.ndarray, np.ndarray, np.ndarray], records: IO[str],
          removed: IO[str], progress: Callable[[int], None] | None = None) -> tuple[Counts, dict]:
    """Write the output lines; returns the counts and {file name: {rows, sha256}} of the outputs.

    `exact`: rows (dup, first) sorted by dup (`dedup_index.EXACT_DTYPE`); `near`: (dup, first,
    Jaccard) sorted by dup (`dedup.resolve_near`).
    """
    counts, kept_out, removed_out = Counts(), _Writer(records), _Writer(removed)
    dups, firsts = exact["dup"], exact["first"]
    near_dups, near_firsts, near_jaccard = near
    targets = np.unique(np.concatenate([firsts, near_firsts]))
    ids: dict[int, str | int] = {}
    number = next_dup = next_near = next_target = 0
    for path in lines:
        with open(path, "rb") as f:
            for raw in f:
                line = raw.decode()
                if line.startswith("R\t"):
                    payload = line[2:]
                    verdict = json.loads(payload)
                    counts.removed(verdict["kind"], verdict)
                    removed_out.write(payload)
                else:
                    _, kind, id_json, row = line.split("\t", 3)
                    if next_target < len(targets) and targets[next_target] == number:
                        ids[number] = json.loads(id_json)
                        next_target += 1
                    verdict = None
                    if next_dup < len(dups) and dups[next_dup] == number:
                        verdict = {"reason": "exact_duplicate", "duplicate_of": ids[int(firsts[next_dup])]}
                        next_dup += 1
                    elif next_near < len(near_dups) and near_dups[next_near] == number:
                        verdict = {"reason": "near_duplicate", "duplicate_of": ids[int(near_firsts[next_near])],
                                   "jaccard": round(float(near_jaccard[next_near]), 4)}
                        next_near += 1
                    if verdict is None:
                        counts.kept(kind)
                        kept_out.write(row)
                    else:
                        counts.removed(kind, verdict)
                        removed_out.write(json.dumps({"id": json.loads(id_json), "kind": kind, **verdict},
                                                     ensure_ascii=False) + "\n")
                    number += 1
                if progress is not None and counts.total % 4096 == 0:
                    progress(counts.total)
    outputs = {"records.jsonl": {"rows": kept_out.rows, "sha256": kept_out.digest.hexdigest()},
               "removed.jsonl": {"rows": removed_out.rows, "sha256": removed_out.digest.hexdigest()}}
    return counts, outputs
