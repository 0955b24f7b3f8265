"""Record shards written whole or not at all, one series per process, so reruns resume.

Process p writes `part-{p:05d}-{seq:06d}.jsonl` files into a directory, each through a temp file and
a rename (`paths.atomic_write`). A killed run therefore leaves only complete shards; `seq`
continues after the process's last shard and processes differ in `p`, so names never collide.
Used by `synthesize` (completions) and `eval` (samples).
"""

from __future__ import annotations

import json
import re

from etils import epath

from jz3_jax.errors import UserError
from jz3_jax.runtime.paths import atomic_write

SHARD = re.compile(r"part-(\d{5})-(\d{6})\.jsonl$")


def shard_files(directory: epath.Path) -> list[epath.Path]:
    """The finished shards in `directory` (temp files of a killed writer are ignored)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SHARD.match(p.name))


class ShardWriter:
    """Buffers one process's records and writes a shard every `shard_size` of them."""

    def __init__(self, directory: epath.Path, process_index: int, shard_size: int, key: str = "shard_size"):
        if shard_size < 1:
            raise UserError(f"{key} must be at least 1, got {shard_size}")
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
