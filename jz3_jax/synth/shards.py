"""Completion shards of the `synthesize` stage: written whole or not at all, so reruns resume.

Each process writes `part-{process:05d}-{seq:06d}.jsonl` files into the completions directory,
every file through a temp file and a rename (`runtime/shards.py`). A killed run therefore leaves only
complete shards; the ids in them are done, everything else is generated again. Shard names never
collide: `seq` continues after the process's last shard and processes differ in `process`.
"""

from __future__ import annotations

import json

from etils import epath

from jz3_jax.runtime.shards import ShardWriter, shard_files  # noqa: F401 - ShardWriter is part of this module's surface
from jz3_jax.synth.errors import SynthesizeError



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
