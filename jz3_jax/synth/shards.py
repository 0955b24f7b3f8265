"""Completion shards of the `synthesize` stage: written whole or not at all, so reruns resume.

Each process writes `part-{process:05d}-{seq:06d}.jsonl` files into the completions directory,
every file through a temp file and a rename (`runtime/shards.py`). A killed run therefore leaves only
complete shards; the ids in them are done, everything else is generated again. Shard names never
collide: `seq` continues after the process's last shard and processes differ in `process`.
"""

from __future__ import annotations

from etils import epath

from jz3_jax.errors import SynthesizeError
from jz3_jax.records.shards import ShardWriter, read_shards  # noqa: F401 - ShardWriter is part of this module's surface


def done_ids(directory: epath.Path) -> set:
    """Ids of every record in the finished shards."""
    return {line.record["id"] for line in read_shards(directory, "completion record", required=("id",),
                                                       error=SynthesizeError,
                                                       hint="remove the file to regenerate its prompts")}
