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
prompt id seen again is an error), each snippet giving its plan's (level, kind) prompts in order.
Process i of n takes positions i, i + n, ... of that sequence, less the ids already done. One
streaming pass finds the share without rendering anything or keeping any text: memory holds, per
line, a 16-byte digest of its id, its byte offset and its prompt count (25 bytes), per prompt a
transient ~40 bytes while the share is chosen, and per prompt of the share 9 bytes; prompts are
rendered one at a time when the share is iterated (re-reading their lines by offset). Ids compare by
a 128-bit BLAKE2b digest of `repr(id)` (so 1 and "1" differ, as in a set).
"""

from __future__ import annotations

import dataclasses
import hashlib
from array import array
import os
from typing import Callable, Iterator

import numpy as np

from jz3_jax.errors import SynthesizeError, UserError
from jz3_jax.records.jsonl import id_reason, parse_line, read_lines
from jz3_jax.records.shards import read_shards
from jz3_jax.runtime.paths import as_path
from jz3_jax.synth.parse import KINDS

READ_CHUNK = 4096  # prompts rendered per opening of the file while a share is iterated


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
    plan: object | None  # a `jz3_jax.prompts.plan.PromptPlan`; None: a prompts file
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
        from jz3_jax.prompts.plan import PromptPlan
        from jz3_jax.prompts.snippets import SnippetError

        plan = PromptPlan.from_config("synthesize", sc, seed)  # settings checked before the file
        if not as_path(path).exists():
            raise SnippetError(f"snippets file {str(path)!r} does not exist (run the corpus stage or set {key})")
        return cls(str(path), plan, SnippetError, "snippets")

    def _reason(self) -> Callable[[dict], str | None]:
        if self.plan is None:
            return prompt_reason
        from jz3_jax.prompts.snippets import snippet_reason
        return snippet_reason

    def _ids(self, row: dict) -> tuple[object, list]:
        """The line's own id and the ids of its prompts, in order."""
        if self.plan is None:
            return row["id"], [row["id"]]
        from jz3_jax.prompts.snippets import snippet_of

        snippet = snippet_of(row)
        return snippet.id, [f"{snippet.id}:{level}:{kind}" for level, kind in self.plan.choices(snippet.id, snippet.source)]

    def prompt_at(self, row: dict, index: int) -> PromptRecord:
        """The `index`-th prompt record of one valid line, rendered."""
        if self.plan is None:
            return PromptRecord(row["id"], row["prompt"], row.get("kind", "cot"), row.get("meta"))
        from jz3_jax.prompts.snippets import snippet_of

        snippet = snippet_of(row)
        level, kind = self.plan.choices(snippet.id, snippet.source)[index]
        p = self.plan.prompt(snippet.id, snippet.source, snippet.text, level, kind)
        return PromptRecord(p.id, p.prompt, p.kind, {"snippet_id": p.snippet_id, "source": p.source,
                                                     "level": p.level, "kind": p.kind})

    def share(self, done: np.ndarray, process_index: int, process_count: int) -> Share:
        """This process's prompts not in `done` (sorted digests, `done_digests`): one pass over the file."""
        offsets, counts, line_ids, prompt_ids = array("q"), array("B"), bytearray(), bytearray()
        for line in read_lines(self.path, error=self.error, validate=self._reason()):
            own, ids = self._ids(line.record)
            offsets.append(line.start)
            counts.append(len(ids))
            line_ids += id_digest(own)
            if done.size:
                for pid in ids:
                    prompt_ids += id_digest(pid)
        if not offsets:
            raise self.error(f"{self.what} file {self.path!r} has no records")
        _, first, inverse = np.unique(_digests(line_ids), return_index=True, return_inverse=True)
        keep = np.zeros(len(offsets), dtype=bool)
        keep[first] = True  # the first line of each id
        if self.plan is None and not keep.all():
            again = int(np.argmin(keep))
            self._duplicate(int(offsets[again]), int(offsets[first[inverse[again]]]))
        per_line = np.frombuffer(counts, dtype=np.uint8).astype(np.int64)
        line_of = np.repeat(np.arange(len(offsets)), per_line)  # the line of each prompt
        choice = np.arange(len(line_of)) - np.repeat(np.cumsum(per_line) - per_line, per_line)
        kept = keep[line_of]
        position = np.cumsum(kept) - 1  # in the sequence of prompts
        done_here = np.isin(_digests(prompt_ids), done) & kept if done.size else np.zeros(len(kept), dtype=bool)
        mine = kept & (position % process_count == process_index) & ~done_here
        all_offsets = np.frombuffer(offsets, dtype=np.int64)
        return Share(self, all_offsets[line_of[mine]], choice[mine].astype(np.uint8), int(kept.sum()),
                     int(done_here.sum()))

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
        validate = self.source._reason()
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
