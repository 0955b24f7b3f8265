"""Completion shards of the `synthesize` stage: written whole or not at all, so reruns resume.

Each process writes `part-{process:05d}-{seq:06d}.jsonl` files into the completions directory,
every file through a temp file and a rename (`atomic.py`). A killed run therefore leaves only
complete shards; the ids in them are done, everything else is generated again. Shard names never
collide: `seq` continues after the process's last shard and processes differ in `process`.
"""

from __future__ import annotations

import json
import re

from etils import epath

from jz3_jax.runtime.paths import atomic_write
from jz3_jax.synth.errors import SynthesizeError

SHARD = re.compile(r"part-(\d{5})-(\d{6})\.jsonl$")


def shard_files(directory: epath.Path) -> list[epath.Path]:
    """The finished shard files in `directory` (temp files of a killed writer are ignored)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SHARD.match(p.name))


def done_ids(directory: epath.Path) -> set:
    """Ids of every record in the finished shards."""
    ids = set()
    for path in shard_files(directory):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    ids.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SynthesizeError(f"{path}:{lineno}: not a completion record; "
                                          "remove the file to regenerate its prompts") from None
    return ids


class ShardWriter:
    """Buffers one process's records and writes a shard every `shard_size` of them."""

    def __init__(self, directory: epath.Path, process_index: int, shard_size: int):
        if shard_size < 1:
            raise SynthesizeError(f"synthesize.shard_size must be at least 1, got {shard_size}")
        self.directory = directory
        self.process_index = process_index
        self.shard_size = shard_size
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
