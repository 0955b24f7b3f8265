"""Many sandboxed programs at once: `SandboxPool` runs `sandbox.run_python` on worker threads."""

from __future__ import annotations

import concurrent.futures
from typing import Iterable

from jz3_jax.eval.sandbox import SandboxResult, resolve_isolation, run_python


class SandboxPool:
    """Runs many sandboxes in parallel on worker threads (each waits on its own child process, so
    the caller's thread, e.g. the decoding loop, never blocks). `submit` returns a Future. The
    isolation is settled here: an unsandboxed fallback is refused now, not at the first program."""

    def __init__(self, workers: int = 4, *, allow_unsandboxed: bool = False, **defaults):
        resolve_isolation(defaults.get("isolation", "auto"), allow_unsandboxed)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers),
                                                               thread_name_prefix="jz3-sandbox")
        self._defaults = {**defaults, "allow_unsandboxed": allow_unsandboxed}

    def submit(self, code: str, **options) -> concurrent.futures.Future:
        """Start `run_python(code, **defaults, **options)` on a worker; a Future of its SandboxResult."""
        return self._executor.submit(run_python, code, **{**self._defaults, **options})

    def map(self, codes: Iterable[str], **options) -> list[SandboxResult]:
        """Run every program (in parallel) and return their results in order."""
        return [f.result() for f in [self.submit(c, **options) for c in codes]]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
