"""Prompt records for the `synthesize` stage, and each process's share of them, streamed.

A prompts file (`synthesize.prompts`) holds JSON lines, each an object with `id` (non-empty string
or integer, unique in the file), `prompt` (non-empty string), and optionally `kind` ("cot" or
"tool", default "cot") and `meta` (an object of provenance, copied into the completion record).
Blank lines are skipped; anything else that breaks this is an error naming the file and line.
Without one, prompts are rendered from a snippets file by the prompt plan (`prompts_from_snippets`).

    source = PromptSource.from_prompts(path)       # or PromptSource.from_snippets(path, sc, seed)
    share = source.share(done_digests(out_dir), process_index, process_count)
    share.total, share.already_done, len(share)    # counts over the whole file, this process's count
    for record in share: ...                       # PromptRecords, rendered as they are taken

The prompts form one sequence: the file's lines in order (a snippet id seen again is read once; a
prompt id seen again is an error), each snippet giving its plan's (level, kind) prompts in order
(the plan's choice depends on the seed and the snippet id only). Process i of n takes positions
i, i + n, ... of that sequence, less the ids already done: the same prompts, order and ids as
rendering the whole list and slicing it. One streaming pass finds the share without rendering
anything or keeping any text: memory holds per line its byte offset, a 64-bit digest of its id and
its prompt count (17 bytes; equal digests are settled by re-reading the ids, so dedup is exact),
16 bytes more per line while sorting the digests, one done flag per prompt when resuming, and per
prompt of the share 9 bytes (its line's offset and its index there). Prompts are rendered one at
a time as the share is iterated. Done ids are matched by a 128-bit BLAKE2b digest of `repr(id)`
(so 1 and "1" differ, as in a set; a false match has odds of about n^2 / 2^128).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from array import array
from typing import Callable, Iterator

import numpy as np

from jz3_jax.errors import SynthesizeError, UserError
from jz3_jax.prompts.plan import PromptPlan
from jz3_jax.prompts.snippets import SnippetError, snippet_of, snippet_reason
from jz3_jax.records.jsonl import id_reason, parse_line, read_lines
from jz3_jax.records.shards import read_shards
from jz3_jax.runtime.paths import as_path
from jz3_jax.synth.parse import KINDS

READ_CHUNK = 4096  # prompts rendered per opening of the file while a share is iterated
LOOKUP_BATCH = 1 << 16  # prompts looked up in the done ids at once; lines per block when picking a share


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    id: str | int
    prompt: str
    kind: str = "cot"
    meta: dict | None = None


def prompt_reason(row: dict) -> str | None:
    """Why `row` is not a prompt record (None when it is)."""
    prompt = row.get("prompt")
    if reason := id_reason(row.get("id")):
        return reason
    if not isinstance(prompt, str) or not prompt:
        return f"field 'prompt' must be a non-empty string, got {prompt!r:.80}"
    return kind_meta_reason(row)


def kind_meta_reason(row: dict) -> str | None:
    """Why the optional `kind` / `meta` fields of a prompt or completion record are invalid (None when
    they are fine)."""
    kind, meta = row.get("kind", "cot"), row.get("meta")
    if kind not in KINDS:
        return f"field 'kind' must be one of {KINDS}, got {kind!r}"
    if meta is not None and not isinstance(meta, dict):
        return f"field 'meta' must be an object, got {type(meta).__name__}"
    return None


def read_prompts(path: str | os.PathLike) -> list[PromptRecord]:
    """All prompt records of the jsonl file `path`, in file order (errors name the file and line)."""
    return list(PromptSource.from_prompts(path).share(NO_IDS, 0, 1))


def prompts_from_snippets(path: str | os.PathLike, sc, seed: int) -> list[PromptRecord]:
    """Prompt records rendered from the snippet file `path` with the prompt library, under the
    `synthesize.levels` / `level_policy` / `kinds` settings `sc`: the prompts distill sends the
    teacher, so the synthesizer sees the format it was fine-tuned on. Ids are
    `SNIPPET_ID:LEVEL:KIND`; `meta` carries the snippet id, source, level and kind."""
    return list(PromptSource.from_snippets(path, sc, seed).share(NO_IDS, 0, 1))


def id_digest(value: object) -> bytes:
    """The 16-byte digest ids are compared by (of `repr`, so 1 and "1" differ)."""
    return hashlib.blake2b(repr(value).encode("utf-8"), digest_size=16).digest()


def _digests(data: bytes | bytearray) -> np.ndarray:
    """`id_digest`s laid end to end, as an array of 16-byte values."""
    return np.frombuffer(bytes(data), dtype="V16")


NO_IDS = _digests(b"")


def done_digests(directory) -> np.ndarray:
    """The sorted digests of the ids of every record in the finished completion shards of `directory`."""
    data = bytearray()
    for line in read_shards(directory, "completion record", required=("id",), error=SynthesizeError,
                            hint="remove the file to regenerate its prompts"):
        data += id_digest(line.record["id"])
    return np.unique(_digests(data))


@dataclasses.dataclass(frozen=True)
class PromptSource:
    """A prompts file, or a snippets file and the plan that renders its prompts."""

    path: str
    plan: PromptPlan | None  # None: a prompts file
    error: type[UserError]
    what: str  # "prompts" or "snippets", in messages

    @classmethod
    def from_prompts(cls, path: str | os.PathLike) -> PromptSource:
        """The prompts file `path` (`synthesize.prompts`); an error when it does not exist."""
        if not as_path(path).is_file():
            raise SynthesizeError(f"prompts file {str(path)!r} does not exist (set synthesize.prompts)")
        return cls(str(path), None, SynthesizeError, "prompts")

    @classmethod
    def from_snippets(cls, path: str | os.PathLike, sc, seed: int, key: str = "synthesize.snippets") -> PromptSource:
        """The snippet file `path` rendered by the plan of the `synthesize` section `sc` and `seed`."""
        plan = PromptPlan.from_config("synthesize", sc, seed)  # settings checked before the file
        if not as_path(path).exists():
            raise SnippetError(f"snippets file {str(path)!r} does not exist (run the corpus stage or set {key})")
        return cls(str(path), plan, SnippetError, "snippets")

    def validator(self) -> Callable[[dict], str | None]:
        """The check of one line of this file (`records.jsonl.Validator`)."""
        if self.plan is None:
            return prompt_reason
        return snippet_reason

    def _ids(self, row: dict) -> tuple[object, list]:
        """The line's own id and the ids of its prompts, in order."""
        if self.plan is None:
            return row["id"], [row["id"]]
        snippet = snippet_of(row)
        choices = self.plan.choices(snippet.id, snippet.source)
        return snippet.id, [f"{snippet.id}:{level}:{kind}" for level, kind in choices]

    def prompt_at(self, row: dict, index: int) -> PromptRecord:
        """The `index`-th prompt record of one valid line, rendered."""
        if self.plan is None:
            return PromptRecord(row["id"], row["prompt"], row.get("kind", "cot"), row.get("meta"))
        snippet = snippet_of(row)
        level, kind = self.plan.choices(snippet.id, snippet.source)[index]
        p = self.plan.prompt(snippet.id, snippet.source, snippet.text, level, kind)
        return PromptRecord(p.id, p.prompt, p.kind, {"snippet_id": p.snippet_id, "source": p.source,
                                                     "level": p.level, "kind": p.kind})

    def share(self, done: np.ndarray, process_index: int, process_count: int) -> Share:
        """This process's prompts not in `done` (sorted digests, `done_digests`): one pass over the file."""
        offsets, counts, line_ids = array("q"), array("B"), array("Q")
        done_flags, pending = bytearray(), bytearray()  # per prompt: done; digests not yet looked up
        for line in read_lines(self.path, error=self.error, validate=self.validator()):
            own, ids = self._ids(line.record)
            offsets.append(line.start)
            counts.append(len(ids))
            line_ids.append(int.from_bytes(id_digest(own)[:8], "little"))
            if done.size:
                for pid in ids:
                    pending += id_digest(pid)
                if len(pending) >= 16 * LOOKUP_BATCH:
                    done_flags += np.isin(_digests(bytes(pending)), done).tobytes()
                    pending.clear()
        if not offsets:
            raise self.error(f"{self.what} file {self.path!r} has no records")
        done_flags += np.isin(_digests(bytes(pending)), done).tobytes() if done.size else b""
        keep = self._first_lines(np.frombuffer(offsets, dtype=np.int64), np.frombuffer(line_ids, dtype=np.uint64))
        return self._pick(np.frombuffer(offsets, dtype=np.int64), np.frombuffer(counts, dtype=np.uint8), keep,
                          np.frombuffer(done_flags, dtype=bool) if done.size else None, process_index, process_count)

    def _first_lines(self, offsets: np.ndarray, digests: np.ndarray) -> np.ndarray:
        """A mask of the lines whose id is new (the first line of each id). Equal 64-bit digests are
        checked by reading the lines' ids again, so the answer is exact; in a prompts file a repeated id
        is an error naming both lines."""
        keep = np.ones(len(digests), dtype=bool)
        order = np.argsort(digests, kind="stable")  # equal digests stay in file order
        ordered = digests[order]
        repeats = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # a sorted position equal to its predecessor
        if not len(repeats):
            return keep
        starts = repeats[np.r_[True, repeats[1:] != repeats[:-1] + 1]] - 1  # the first member of each group
        for start in starts.tolist():
            end = start + 1
            while end < len(ordered) and ordered[end] == ordered[start]:
                end += 1
            first: dict = {}
            for line in sorted(order[start:end].tolist()):
                own = self._ids(self._row_at(int(offsets[line])))[0]
                if own in first:
                    keep[line] = False
                else:
                    first[own] = line
        if self.plan is None and not keep.all():
            again = int(np.argmin(keep))
            own = self._ids(self._row_at(int(offsets[again])))[0]
            same = [i for i in np.flatnonzero(digests == digests[again]).tolist()
                    if self._ids(self._row_at(int(offsets[i])))[0] == own]
            self._duplicate(int(offsets[again]), int(offsets[same[0]]))
        return keep

    def _row_at(self, offset: int) -> dict:
        """The record of the valid line at byte `offset`."""
        with as_path(self.path).open("rb") as f:
            f.seek(offset)
            row, reason = parse_line(f.readline(), self.validator())
        if reason:
            raise self.error(f"{self.path}: changed while it was read ({reason})")
        return row

    def _pick(self, offsets: np.ndarray, counts: np.ndarray, keep: np.ndarray, done: np.ndarray | None,
              process_index: int, process_count: int) -> Share:
        """Walk the prompt sequence (lines `keep`, `counts[i]` prompts each) in blocks of lines, taking
        positions `process_index` mod `process_count` that are not `done` (a flag per prompt of every line)."""
        mine_offsets, mine_choices = [], []
        position = prompt = already_done = 0  # kept prompts so far; prompts of any line so far
        for a in range(0, len(offsets), LOOKUP_BATCH):
            per_line = counts[a:a + LOOKUP_BATCH].astype(np.int64)
            line_of = np.repeat(np.arange(a, a + len(per_line)), per_line)
            choice = np.arange(len(line_of)) - np.repeat(np.cumsum(per_line) - per_line, per_line)
            kept = keep[line_of]
            positions = position + np.cumsum(kept) - 1
            mine = kept & (positions % process_count == process_index)
            if done is not None:
                done_here = done[prompt:prompt + len(line_of)] & kept
                mine &= ~done_here
                already_done += int(done_here.sum())
            mine_offsets.append(offsets[line_of[mine]])
            mine_choices.append(choice[mine].astype(np.uint8))
            position += int(kept.sum())
            prompt += len(line_of)
        return Share(self, np.concatenate(mine_offsets), np.concatenate(mine_choices), position, already_done)

    def _duplicate(self, offset: int, first_offset: int) -> None:
        """Raise the error for a prompt id at `offset` that a line at `first_offset` has already."""
        newlines, first_newlines, read = 0, 0, 0
        with as_path(self.path).open("rb") as f:
            while read < offset:  # count line breaks without holding the file
                block = f.read(min(1 << 20, offset - read))
                if read < first_offset:
                    first_newlines += block[:max(0, first_offset - read)].count(b"\n")
                newlines += block.count(b"\n")
                read += len(block)
            row, _ = parse_line(f.readline())
        raise self.error(f"{self.path}:{newlines + 1}: duplicate id {row['id']!r} (first on line {first_newlines + 1})")


@dataclasses.dataclass
class Share:
    """One process's prompts (see the module docstring): `total` prompts in the file, `already_done`
    of them done, `len(share)` for this process, iterated as rendered PromptRecords in file order."""

    source: PromptSource
    offsets: np.ndarray  # per prompt of the share: its line's byte offset
    choices: np.ndarray  # and its index among the line's prompts
    total: int
    already_done: int

    def __len__(self) -> int:
        return len(self.offsets)

    def __iter__(self) -> Iterator[PromptRecord]:
        validate = self.source.validator()
        for start in range(0, len(self), READ_CHUNK):
            with as_path(self.source.path).open("rb") as f:
                last, row = -1, {}
                for offset, index in zip(self.offsets[start:start + READ_CHUNK].tolist(),
                                         self.choices[start:start + READ_CHUNK].tolist()):
                    if offset != last:
                        f.seek(offset)
                        row, reason = parse_line(f.readline(), validate)
                        if reason:
                            raise self.source.error(f"{self.source.path}: changed while it was read ({reason})")
                        last = offset
                    yield self.source.prompt_at(row, index)
