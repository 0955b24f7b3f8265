"""Per-process record shards: written whole or not at all (`ShardWriter`), read back line by line.

Process p writes `part-{p:05d}-{seq:06d}.jsonl` files into one directory through a temp file and a
rename (the writer and the name pattern live in `runtime/shards.py`); a killed run leaves only whole
shards, so the records in them are done and a rerun resumes after them. Used by `synthesize`
(completions) and `eval` (samples).
"""

from __future__ import annotations

from typing import Iterator

from etils import epath

from jz3_jax.errors import RecordError, UserError
from jz3_jax.records.jsonl import BadRecords, Line, Validator, read_lines
from jz3_jax.runtime.shards import ShardWriter, shard_files

__all__ = ["ShardWriter", "read_shards", "shard_files"]


def read_shards(directory: epath.Path, what: str = "record", *, required: tuple[str, ...] = (),
                validate: Validator | None = None, error: type[UserError] = RecordError,
                hint: str = "remove the file to regenerate its records") -> Iterator[Line]:
    """The records of every finished shard in `directory`, in shard then line order.

    A record that is not JSON, lacks a `required` field or fails `validate` raises `error` naming
    `file:line`, with `hint` (by default: remove that shard, so its records are generated again).
    """
    def check(record: dict) -> str | None:
        missing = [name for name in required if name not in record]
        if missing:
            return f"not a {what} (no field {missing[0]!r})"
        return validate(record) if validate is not None else None

    bad = BadRecords(error=error, hint=hint)
    yield from read_lines(shard_files(directory), bad, validate=check)
