"""The `select` stage's inputs: candidate and target records, tokenized, and their micro-batches.

Candidates: jsonl with `id` and either `text` (the whole text is the loss target) or `input` /
`output` (loss on the output only). Targets: jsonl with `task`, `input`, `output`. Bad records are
named with their file and line; an empty file is refused before anything compiles.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jz3_jax.data.examples import encode_example
from jz3_jax.errors import UserError
from jz3_jax.records.jsonl import read_lines


class SelectInputError(UserError):
    """A candidates or targets file that cannot be used (missing, empty, or a bad record)."""


@dataclasses.dataclass
class Item:
    """One record to score: its original JSON object and the {"input", "output"} it trains on."""

    record: dict
    input: str
    output: str
    task: str = ""


def _lines(path: str, what: str):
    """(line number, record) of the jsonl file `path`, named by `select.{what}`."""
    if not Path(path).is_file():
        raise SelectInputError(f"select.{what}: {path} does not exist")
    for line in read_lines(path, error=SelectInputError):
        yield line.number, line.record


def read_candidates(path: str) -> list[Item]:
    """Candidate items; a record without `text` or `input`/`output` strings fails naming its line."""
    items, seen = [], set()
    for number, record in _lines(path, "candidates"):
        if isinstance(record.get("text"), str):
            item = Item(record, "", record["text"])
        elif isinstance(record.get("input"), str) and isinstance(record.get("output"), str):
            item = Item(record, record["input"], record["output"])
        else:
            raise SelectInputError(f"{path}:{number}: a candidate needs a `text` string or `input` and `output` "
                                   f"strings; it has fields {sorted(record)}")
        cid = record.get("id", f"line-{number}")
        if str(cid) in seen:
            raise SelectInputError(f"{path}:{number}: duplicate candidate id {cid!r}")
        seen.add(str(cid))
        items.append(item)
    if not items:
        raise SelectInputError(f"select.candidates: {path} has no records")
    return items


def read_targets(path: str) -> list[Item]:
    """Target items (`task`, `input`, `output`); an empty file is refused."""
    if not path:
        raise SelectInputError("select.targets must name a jsonl file of target examples (task, input, output)")
    items = []
    for number, record in _lines(path, "targets"):
        if not (isinstance(record.get("input"), str) and isinstance(record.get("output"), str)):
            raise SelectInputError(f"{path}:{number}: a target needs `input` and `output` strings; "
                                   f"it has fields {sorted(record)}")
        items.append(Item(record, record["input"], record["output"], str(record.get("task", ""))))
    if not items:
        raise SelectInputError(f"select.targets: {path} has no records: nothing to select for")
    return items


def candidate_id(item: Item, index: int) -> str:
    return str(item.record.get("id", f"line-{index + 1}"))


@dataclasses.dataclass
class Encoded:
    """Tokenized items: per item its shifted tokens, targets and loss mask (numpy, unpadded)."""

    tokens: list[np.ndarray]
    targets: list[np.ndarray]
    loss_mask: list[np.ndarray]
    truncated: int

    def __len__(self) -> int:
        return len(self.tokens)


def encode_items(items: list[Item], tokenizer, max_length: int) -> Encoded:
    tokens, targets, masks, truncated = [], [], [], 0
    for item in items:
        ex = encode_example({"input": item.input, "output": item.output}, tokenizer, max_length=max_length)
        tokens.append(ex.tokens)
        targets.append(ex.targets)
        masks.append(ex.loss_mask)
        truncated += int(ex.truncated)
    return Encoded(tokens, targets, masks, truncated)


def bucket_length(n: int, bucket: int, max_length: int) -> int:
    """`n` rounded up to a multiple of `bucket` (at least one bucket, at most `max_length` rounded up)."""
    n = max(1, min(n, max_length))
    return -(-n // bucket) * bucket


def plan_batches(encoded: Encoded, indices: np.ndarray, *, bucket: int, max_length: int, token_budget: int,
                 multiple: int = 1) -> list[tuple[int, np.ndarray]]:
    """Micro-batches (bucket length, item indices padded with -1) over `indices`, grouped by length.

    Rows per micro-batch = token_budget // length, rounded down to a multiple of `multiple` (the
    local device count), at least `multiple`; the last batch of a bucket is padded with -1 rows so
    each bucket has one shape."""
    by_length: dict[int, list[int]] = {}
    for i in indices.tolist():
        by_length.setdefault(bucket_length(len(encoded.tokens[i]), bucket, max_length), []).append(i)
    plan = []
    for length in sorted(by_length):
        rows = max(multiple, (token_budget // length) // multiple * multiple)
        members = by_length[length]
        for start in range(0, len(members), rows):
            chunk = np.full(rows, -1, np.int64)
            part = members[start:start + rows]
            chunk[:len(part)] = part
            plan.append((length, chunk))
    return plan


def batch_arrays(encoded: Encoded, chunk: np.ndarray, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """[rows, length] tokens/targets/loss_mask for the items of `chunk` (-1 = an all-masked pad row)."""
    rows = len(chunk)
    tokens = np.full((rows, length), pad_id, np.int32)
    targets = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.float32)
    for r, i in enumerate(chunk.tolist()):
        if i < 0:
            continue
        n = len(encoded.tokens[i])
        tokens[r, :n], targets[r, :n], mask[r, :n] = encoded.tokens[i], encoded.targets[i], encoded.loss_mask[i]
    return {"tokens": tokens, "targets": targets, "loss_mask": mask}
