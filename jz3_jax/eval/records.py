"""Sample files of the `eval` stage: shards written whole (temp file + rename), so reruns resume.

Process p writes `samples/part-{p:05d}-{seq:06d}.jsonl`; a killed run leaves only whole shards, the
samples in them are done and never generated again. Reading them back names file and line on a
broken record.
"""

from __future__ import annotations

from etils import epath

from jz3_jax.errors import EvalError
from jz3_jax.records.shards import ShardWriter, read_shards as _read_shards  # noqa: F401 - ShardWriter is part of this module's surface


def read_shards(directory: epath.Path) -> list[dict]:
    """Every sample record of the finished shards (each has the resumption key, `dataset` and `id`)."""
    return [line.record for line in _read_shards(directory, "sample record", required=("dataset", "id"),
                                                  error=EvalError,
                                                  hint="remove the file to regenerate its samples")]


def sample_key(record: dict) -> tuple[str, str]:
    return str(record["dataset"]), str(record["id"])
