"""Sample files of the `eval` stage: shards written whole (temp file + rename), so reruns resume.

Process p writes `samples/part-{p:05d}-{seq:06d}.jsonl`; a killed run leaves only whole shards, the
samples in them are done and never generated again. Reading them back names file and line on a
broken record.
"""

from __future__ import annotations

import json
import re

from etils import epath

from jz3_jax.eval.errors import EvalError
from jz3_jax.runtime.paths import atomic_write

SHARD = re.compile(r"part-(\d{5})-(\d{6})\.jsonl$")


def shard_files(directory: epath.Path) -> list[epath.Path]:
    """The finished shards in `directory` (temp files of a killed writer are ignored)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SHARD.match(p.name))


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


class ShardWriter:
    """Buffers one process's records and writes a shard every `shard_size` of them."""

    def __init__(self, directory: epath.Path, process_index: int, shard_size: int):
        if shard_size < 1:
            raise EvalError(f"eval.shard_size must be at least 1, got {shard_size}")
        self.directory, self.process_index, self.shard_size = directory, process_index, shard_size
        self.buffer: list[dict] = []
        mine = [int(SHARD.match(p.name).group(2)) for p in shard_files(directory)
                if int(SHARD.match(p.name).group(1)) == process_index]
        self.next_seq = max(mine, default=-1) + 1

    def add(self, record: dict) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records (if any) as one shard."""
        if not self.buffer:
            return
        path = self.directory / f"part-{self.process_index:05d}-{self.next_seq:06d}.jsonl"
        with atomic_write(path) as f:
            for record in self.buffer:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.next_seq += 1
        self.buffer = []
