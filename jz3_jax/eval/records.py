"""Sample files of the `eval` stage: shards written whole (temp file + rename), so reruns resume.

Process p writes `samples/part-{p:05d}-{seq:06d}.jsonl`; a killed run leaves only whole shards, the
samples in them are done and never generated again. Reading them back names file and line on a
broken record.
"""

from __future__ import annotations

import json

from etils import epath

from jz3_jax.eval.errors import EvalError
from jz3_jax.runtime.shards import ShardWriter, shard_files  # noqa: F401 - ShardWriter is part of this module's surface



def read_shards(directory: epath.Path) -> list[dict]:
    """Every sample record of the finished shards."""
    records = []
    for path in shard_files(directory):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    record["dataset"], record["id"]  # noqa: B018 - the resumption key must be there
                except (ValueError, KeyError, TypeError):
                    raise EvalError(f"{path}:{lineno}: not a sample record; remove the file to regenerate "
                                    "its samples") from None
                records.append(record)
    return records


def sample_key(record: dict) -> tuple[str, str]:
    return str(record["dataset"]), str(record["id"])
