"""The first pass of `filter`: each process reads its own byte range of the inputs and judges each record.

The input files, taken in order as one byte stream, are cut into equal byte ranges, one per
process; a process takes the lines that start in its range (`share_of`). Record order is file then
line order, so process p's records all come before process p + 1's. A process never reads another's
lines (it reads at most the tail of one line before its range, to find the first line start).

For each record the pass decides the checks that need nothing but the record itself (truncated,
malformed, contaminated) and writes one line per record to its `lines` file (`Verdicts`), and for
the survivors their deduplication features to its spool (`dedup_spool.SpoolWriter`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import IO, Callable, Iterator

from jz3_jax.errors import FilterError
from jz3_jax.prompts.library import SOLUTION_HEADERS
from jz3_jax.records.jsonl import line_number, parse_line
from jz3_jax.runtime.paths import as_path
from jz3_jax.synth.completions import Completion, check_completion
from jz3_jax.synth.contamination import EvalIndex
from jz3_jax.synth.dedup import MinHasher, exact_key
from jz3_jax.synth.dedup_spool import SpoolWriter
from jz3_jax.synth.parse import KINDS, Malformed, parse_completion
from jz3_jax.synth.text import WordHasher, words



@dataclasses.dataclass(frozen=True)
class Piece:
    """The lines of file `path` that start at a byte offset in [start, end)."""

    path: str
    start: int
    end: int


def share_of(files: list[str], sizes: list[int], process: int, processes: int) -> list[Piece]:
    """Process `process`'s byte range of the files (in order, as one stream), as pieces of files."""
    total = sum(sizes)
    low, high = total * process // processes, total * (process + 1) // processes
    pieces, base = [], 0
    for path, size in zip(files, sizes):
        start, end = max(low, base) - base, min(high, base + size) - base
        if start < end:
            pieces.append(Piece(path, start, end))
        base += size
    return pieces


def iter_piece(piece: Piece) -> Iterator[tuple[bytes, int]]:
    """(line, its byte offset) of the lines starting in the piece, blank lines included."""
    with as_path(piece.path).open("rb") as f:
        pos = piece.start
        if pos > 0:  # the line holding byte start - 1 belongs to the range before
            f.seek(pos - 1)
            pos += len(f.readline()) - 1
        while pos < piece.end:
            data = f.readline()
            if not data:
                return
            yield data, pos
            pos += len(data)


def training_input(problem: str, kind: str) -> str:
    """The prompt side of a training record, in the evaluation format."""
    return f"## Question\n{problem}\n\n{SOLUTION_HEADERS[kind]}\n"


class Verdicts:
    """One process's `lines` file: a line per record, in record order.

    `R<TAB>{removed row}` for a record removed by this pass, `K<TAB>kind<TAB>id<TAB>{record row}` for a
    survivor (its id as JSON, for `duplicate_of`); both rows are the final output lines.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def removed(self, row: dict) -> None:
        """A record removed by the per-record checks (`row` is its removed.jsonl line)."""
        self.handle.write(b"R\t" + json.dumps(row, ensure_ascii=False).encode() + b"\n")

    def survivor(self, kind: str, record_id: str | int, row: dict) -> None:
        """A record that passed them (`row` is its records.jsonl line unless it is a duplicate)."""
        self.handle.write(f"K\t{kind}\t{json.dumps(record_id)}\t{json.dumps(row, ensure_ascii=False)}\n".encode())


@dataclasses.dataclass
class ScanStats:
    """What one process's pass read."""

    records: int = 0
    survivors: int = 0
    seconds: float = 0.0


class Judge:
    """The per-record checks (truncated, malformed, contaminated) and the survivors' features."""

    def __init__(self, index: EvalIndex | None, minhasher: MinHasher, hasher: WordHasher) -> None:
        self.index, self.minhasher, self.hasher = index, minhasher, hasher

    def __call__(self, rec: Completion) -> dict | tuple:
        """A dict saying why the record is removed, or (problem, solution, features) of a survivor."""
        if rec.finish_reason == "length":
            return {"reason": "truncated"}
        parsed = parse_completion(rec.completion, rec.kind)
        if isinstance(parsed, Malformed):
            return {"reason": "malformed", "detail": parsed.reason}
        problem_words = words(parsed.problem)
        if self.index is not None:
            match = self.index.match(problem_words, words(parsed.solution))
            if match is not None:
                return {"reason": "contaminated", "set": match.set, "sets": match.sets, "ngrams": match.ngrams,
                        "example": match.example}
        shingles, band_keys, sketch = self.minhasher.features(KINDS.index(rec.kind), self.hasher(problem_words))
        return parsed.problem, parsed.solution, (exact_key(rec.kind, parsed.problem), shingles, band_keys, sketch)


def scan(pieces: list[Piece], judge: Judge, verdicts: Verdicts, spool: SpoolWriter,
         progress: Callable[[int, int], None] | None = None) -> ScanStats:
    """Judge every record of `pieces`; FilterError naming file and line for a line that breaks the
    completion contract. `progress(records, bytes)` is called every 256 records."""
    stats, started, done = ScanStats(), time.perf_counter(), 0
    for piece in pieces:
        for data, offset in iter_piece(piece):
            done += len(data)
            if not data.strip():
                continue
            row, reason = parse_line(data, check_completion)
            if reason:
                raise FilterError(f"{piece.path}:{line_number(piece.path, offset)}: {reason}")
            rec = Completion(row["id"], row["completion"], row["finish_reason"], row.get("kind", "cot"),
                             row.get("meta"), f"{piece.path}:byte {offset}")
            stats.records += 1
            verdict = judge(rec)
            if isinstance(verdict, dict):
                verdicts.removed({"id": rec.id, "kind": rec.kind, **verdict})
            else:
                problem, solution, features = verdict
                out = {"input": training_input(problem, rec.kind), "output": solution, "id": rec.id,
                       "kind": rec.kind, "source_hash": hashlib.sha256(rec.completion.encode()).hexdigest()}
                if rec.meta is not None:
                    out["meta"] = rec.meta
                verdicts.survivor(rec.kind, rec.id, out)
                spool.add(*features)
                stats.survivors += 1
            if progress is not None and stats.records % 256 == 0:
                progress(stats.records, done)
    spool.flush()
    if progress is not None:
        progress(stats.records, done)
    stats.seconds = time.perf_counter() - started
    return stats
