"""Grading in child processes with a per-item timeout, one process per core when grading in bulk.

math-verify times itself out with `signal.alarm`, which works only on the main thread, and a
sympy simplification can run for minutes; so verdicts are computed in a worker process (a plain
`python -m jz3_jax.eval.grader.worker` child talking JSON lines over pipes; no multiprocessing,
which would re-import the caller's `__main__` or fork a process running JAX). A call that takes
longer than its timeout kills its worker (a new one starts for the next call), so a runaway
comparison never keeps burning CPU. `WorkerPool` holds several workers for threads to share.
"""

from __future__ import annotations

import contextlib
import json
import queue
import select
import subprocess
import sys
import threading


def _judge(text: str, gold: str, choices, policy: str):
    from jz3_jax.eval.grader.policies import judge

    return list(judge(text, gold, choices, policy))


def _math_verify(text: str, gold: str, choices) -> bool:
    from jz3_jax.eval.grader.policies import math_verify_verdict

    return math_verify_verdict(text, gold, choices)


def _warm() -> bool:
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" notice: we time out
    import latex2sympy2_extended  # noqa: F401
    import math_verify  # noqa: F401
    import sympy  # noqa: F401

    import jz3_jax.eval.grader.policies  # noqa: F401

    return True


_FUNCTIONS = {"judge": _judge, "math_verify": _math_verify, "warm": _warm}


WORKER_MEMORY_BYTES = 4 << 30  # a runaway expansion (10^{10^{10}}) fails with MemoryError, not the host


def _serve() -> None:
    """Worker main loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(WORKER_MEMORY_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints of a library never corrupt the replies
    for line in sys.stdin:
        name, args = json.loads(line)
        try:
            reply = ["ok", _FUNCTIONS[name](*args)]
        except Exception as error:  # noqa: BLE001 - an unparsable answer is a result, not a crash
            reply = ["error", f"{type(error).__name__}: {error}"]
        out.write(json.dumps(reply) + "\n")
        out.flush()


class TimeoutWorker:
    """One worker process answering `call(name, *args, timeout=...)`; thread-safe (calls queue)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def _start(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "jz3_jax.eval.grader.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _ask(self, name: str, args, timeout: float):
        self._process.stdin.write(json.dumps([name, list(args)]) + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        if not ready:
            self._stop()
            return ("timeout", None)
        line = self._process.stdout.readline()
        try:
            status, value = json.loads(line)
        except ValueError:
            self._stop()
            return ("error", "the grading worker died" if not line else f"unreadable reply {line[:200]!r}")
        return (status, value)

    def call(self, name: str, *args, timeout: float = 3.0):
        """(status, value): ("ok", result), ("error", message) or ("timeout", None)."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
                if self._ask("warm", (), 120.0)[0] != "ok":  # imports take seconds: not any item's time
                    self._stop()
                    raise RuntimeError("the grading worker did not start")
            return self._ask(name, args, timeout)

    def close(self) -> None:
        with self._lock:
            self._stop()


class WorkerPool:
    """`size` workers lent one at a time to the threads that grade (`with pool.lease() as w:`)."""

    def __init__(self, size: int):
        self._workers = [TimeoutWorker() for _ in range(max(1, size))]
        self._free: queue.Queue[TimeoutWorker] = queue.Queue()
        for w in self._workers:
            self._free.put(w)

    @property
    def size(self) -> int:
        return len(self._workers)

    @contextlib.contextmanager
    def lease(self):
        worker = self._free.get()
        try:
            yield worker
        finally:
            self._free.put(worker)

    def close(self) -> None:
        for w in self._workers:
            w.close()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def shared_pool() -> WorkerPool:
    """The process-wide one-worker pool for single calls (started on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool(1)
        return _pool


if __name__ == "__main__":
    _serve()
