"""The on-disk answer cache: one file per request hash, written whole before anything else happens.

`cache_dir/HH/HASH.json` (HH = the first two hex digits) holds the request body and the raw
response text exactly as received. It is written (temp file, fsync, rename) as soon as a 200
response arrives, before it is parsed, validated or counted, so an answer that was paid for is
never lost, whatever happens next (a crash, a SIGKILL, a rejected answer). A body that turns out
not to be a chat completion is moved to `cache_dir/malformed/` (kept for inspection, never served
as an answer), so the request is asked again. One file per hash also works on object stores
(gs://) and with several writers.
"""

from __future__ import annotations

import json
import time

from etils import epath

from jz3_jax.runtime.paths import atomic_write


class AnswerCache:
    """Paid answers by request hash."""

    def __init__(self, root: epath.Path):
        self.root = root

    def path(self, digest: str) -> epath.Path:
        return self.root / digest[:2] / f"{digest}.json"

    def hashes(self) -> set[str]:
        """The hashes that have an answer on disk."""
        if not self.root.exists():
            return set()
        return {p.name[:-len(".json")] for p in self.root.glob("??/*.json")}

    def put(self, digest: str, request: dict, raw: str) -> None:
        """Store one raw 200 response for the request `digest`, durably, before it is used."""
        entry = {"hash": digest, "request": request, "received_at": time.time(), "response": raw}
        with atomic_write(self.path(digest)) as f:
            f.write(json.dumps(entry, ensure_ascii=False))

    def get(self, digest: str) -> str:
        """The raw response text stored for `digest`."""
        return json.loads(self.path(digest).read_text(encoding="utf-8"))["response"]

    def discard_malformed(self, digest: str) -> None:
        """Move the entry of `digest` aside: its body is not an answer, so the request is asked again."""
        source = self.path(digest)
        target = self.root / "malformed" / f"{digest}-{time.time_ns()}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        source.replace(target)
