"""Slow comparisons (sympy, math-verify) in a separate worker process with a per-item timeout.

math-verify times itself out with `signal.alarm`, which works only on the main thread; we turn
that off and time out ourselves: the call runs in a spawned worker process, and a call that takes
longer than its timeout kills the worker (a new one starts for the next call). This works from any
thread, and a runaway simplification never keeps burning CPU after its timeout.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading


def _sympy_equal(a: str, b: str) -> bool:
    import sympy
    from latex2sympy2_extended import latex2sympy

    def parse(s: str):
        try:
            return latex2sympy(s)
        except Exception:  # noqa: BLE001 - not LaTeX: try plain sympy syntax
            return sympy.sympify(s.replace("^", "**"))

    x, y = parse(a), parse(b)
    try:
        if x == y:
            return True
        diff = sympy.simplify(x - y)
        if diff == 0:
            return True
        return bool(abs(complex(sympy.N(diff))) <= 1e-6)
    except Exception:  # noqa: BLE001 - sets, relations, matrices: compare their simplified forms
        return sympy.simplify(x) == sympy.simplify(y)


def _math_verify(gold: str, prediction: str) -> dict:
    from math_verify import parse, verify

    gold_parsed = parse(gold, parsing_timeout=None)
    pred_parsed = parse(prediction, parsing_timeout=None)
    correct = bool(gold_parsed) and bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=None)
    return {"correct": bool(correct), "pred": str(pred_parsed[-1]) if pred_parsed else ""}


def _warm() -> bool:
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" notice: we time out
    import latex2sympy2_extended  # noqa: F401
    import math_verify  # noqa: F401
    import sympy  # noqa: F401

    return True


_FUNCTIONS = {"sympy_equal": _sympy_equal, "math_verify": _math_verify, "warm": _warm}


def _serve() -> None:
    """Worker main loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import json
    import sys
    import warnings

    warnings.filterwarnings("ignore")
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
    """One worker process answering `call(name, *args, timeout=...)`; thread-safe (calls queue).

    The worker is a plain `python -m jz3_jax.eval.symbolic` child talking JSON lines over pipes (no
    multiprocessing: it would re-import the caller's `__main__` or fork a process running JAX)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def _start(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "jz3_jax.eval.symbolic"], stdin=subprocess.PIPE,
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
        if not line:
            self._stop()
            return ("error", "the grading worker died")
        status, value = json.loads(line)
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


_worker: TimeoutWorker | None = None
_worker_lock = threading.Lock()


def worker() -> TimeoutWorker:
    """The process-wide worker (started on first use)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = TimeoutWorker()
        return _worker


if __name__ == "__main__":
    _serve()
