"""The one way the project runs model-written code: `run_python` in a fresh, isolated process.

Each call starts `_supervisor.py` (standard library only) in its own session with an empty
environment. Where the kernel allows unprivileged user namespaces (the default "namespaces"
isolation) the program gets its own user, mount, network (only a down `lo`), PID, IPC and UTS
namespaces: the whole file system is read-only except a fresh empty working directory, home and
temp directories are hidden, the program holds no capabilities (and runs as host uid 65534 when
the evaluator is root), and ending the namespace's PID 1 kills every descendant before the call
returns. Elsewhere ("rlimits") it runs in its own session under a child subreaper that kills all
descendants at the end, as uid 65534 when the evaluator is root. Both modes set CPU, address space,
process, open-file and file-size limits and refuse IPv4/IPv6 sockets with a seccomp filter.

See the README's sandbox section for what this does and does not protect against.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterable

SUPERVISOR = Path(__file__).with_name("_supervisor.py")
STATUSES = ("ok", "error", "timeout", "memory", "killed")
HIDDEN_DIRS = ("/root", "/home", "/tmp", "/var/tmp", "/run/user")
SANDBOX_UID = 65534
_SIGNAL_NAMES = {s.value: s.name for s in signal.Signals}


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not a failure of the program it runs)."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """How one program ended: `status` is ok (exit 0), error (non-zero exit), timeout (wall clock or
    CPU limit), memory (address-space limit) or killed (ended by a signal); output is truncated."""

    status: str
    stdout: str
    stderr: str
    seconds: float
    exit_code: int | None = None
    signal: str | None = None
    isolation: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether this kernel lets us build the namespaced sandbox (probed once with a trivial program)."""
    try:
        result = _run("pass", timeout_s=10.0, memory_mb=512, max_output_chars=200, isolation="namespaces")
    except SandboxError:
        return False
    return result.status == "ok"


def default_isolation() -> str:
    """"namespaces" where available, else "rlimits"."""
    return "namespaces" if namespaces_available() else "rlimits"


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 1024, max_output_chars: int = 4096,
               max_processes: int = 16, max_open_files: int = 64, max_file_mb: int = 16,
               workdir: str | os.PathLike | None = None, isolation: str = "auto",
               python: str | None = None) -> SandboxResult:
    """Run `code` as a Python program in the sandbox and return how it ended.

    `timeout_s` is wall-clock time (the CPU limit is the same, rounded up); `memory_mb` caps the
    address space; `max_processes`, `max_open_files` and `max_file_mb` cap processes (of the
    program's user), file descriptors and the size of any file written (stdout included). The
    working directory is a fresh empty temp directory removed afterwards, or `workdir` (an existing
    directory, kept: for tests and debugging). `isolation` is "auto", "namespaces" or "rlimits".
    `python` is the interpreter that runs the program (default: this one, with its packages).
    Safe to call from many threads at once.
    """
    if isolation == "auto":
        isolation = default_isolation()
    return _run(code, timeout_s=timeout_s, memory_mb=memory_mb, max_output_chars=max_output_chars,
                max_processes=max_processes, max_open_files=max_open_files, max_file_mb=max_file_mb,
                workdir=workdir, isolation=isolation, python=python)


def _keep_paths() -> list[str]:
    """Directories the interpreter needs even when they sit under a hidden directory."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in (sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")) if p)
    return sorted(p for p in paths if p and os.path.isdir(p))


def _world_reachable(path: str) -> bool:
    """Whether any user may run `path` (every directory above it searchable by others)."""
    real = os.path.realpath(path)
    parts = Path(real).parents
    return all(os.stat(p).st_mode & 0o001 for p in parts) and bool(os.stat(real).st_mode & 0o005)


def _run(code: str, *, timeout_s: float, memory_mb: int, max_output_chars: int, max_processes: int = 16,
         max_open_files: int = 64, max_file_mb: int = 16, workdir=None, isolation: str,
         python: str | None = None) -> SandboxResult:
    if isolation not in ("namespaces", "rlimits"):
        raise ValueError(f"isolation must be auto, namespaces or rlimits, got {isolation!r}")
    private = tempfile.mkdtemp(prefix="jz3_sandbox_")  # output files and the program: not the program's to write
    own_workdir = workdir is None
    box = tempfile.mkdtemp(prefix="jz3_box_") if own_workdir else os.fspath(workdir)
    box = os.path.realpath(box)
    try:
        script = os.path.join(private, "main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        as_root = os.geteuid() == 0
        python = python or sys.executable
        if isolation == "rlimits" and as_root and not _world_reachable(python):
            # As root without namespaces the program could only run as root: kill(-1) would end the host.
            raise SandboxError(f"rlimits isolation as root needs an interpreter that uid {SANDBOX_UID} can run; "
                               f"{os.path.realpath(python)} is not reachable by others (use namespaces)")
        if as_root:
            os.chown(box, SANDBOX_UID, SANDBOX_UID)
            os.chmod(private, 0o755)
            os.chmod(script, 0o644)
        result_r, result_w = os.pipe()
        spec = {
            "isolation": isolation, "timeout_s": float(timeout_s), "result_fd": result_w, "workdir": box,
            "python": python, "script": script, "hide": list(HIDDEN_DIRS), "keep": _keep_paths() + [private],
            "map_program_uid": as_root, "drop_to_nobody": as_root,
            "limits": {"cpu_s": max(1, math.ceil(timeout_s)), "memory_bytes": int(memory_mb) << 20,
                       "processes": int(max_processes), "open_files": int(max_open_files),
                       "file_bytes": int(max_file_mb) << 20},
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": box, "TMPDIR": box, "LANG": "C.UTF-8",
                    "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                    "MPLBACKEND": "Agg", "MPLCONFIGDIR": box},
        }
        out_path, err_path = os.path.join(private, "stdout"), os.path.join(private, "stderr")
        start = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(SUPERVISOR), json.dumps(spec)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env={}, cwd=box,
                                    start_new_session=True, pass_fds=(result_w,))
        os.close(result_w)
        try:
            raw = _read_all(result_r, timeout_s + 30.0)
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:  # the supervisor itself hung: should not happen
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SandboxError("the sandbox supervisor did not finish") from None
        finally:
            os.close(result_r)
        seconds = time.monotonic() - start
        stdout = _read_text(out_path, max_output_chars)
        stderr = _read_text(err_path, max_output_chars)
        try:
            report = json.loads(raw or b"null")
        except ValueError:
            report = None
        if not isinstance(report, dict):
            raise SandboxError(f"the sandbox supervisor exited {proc.returncode} without a report: {stderr[-500:]}")
        if "setup_error" in report:
            raise SandboxError(f"sandbox set-up failed ({isolation}): {report['setup_error']}")
        return _result(report, stdout, stderr, seconds, isolation)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        if own_workdir:
            shutil.rmtree(box, ignore_errors=True)


def _read_all(fd: int, timeout: float) -> bytes:
    import select

    chunks, deadline = [], time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise subprocess.TimeoutExpired("sandbox", timeout)
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _read_text(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit * 4 + 4)
    text = data.decode("utf-8", errors="replace")
    return text[:limit] + ("\n[output truncated]" if len(text) > limit else "")


def _result(report: dict, stdout: str, stderr: str, seconds: float, isolation: str) -> SandboxResult:
    code, sig = report.get("exit"), report.get("signal")
    sig_name = _SIGNAL_NAMES.get(sig, str(sig)) if sig is not None else None
    if report.get("timeout") or sig == signal.SIGXCPU:
        status = "timeout"
    elif "MemoryError" in stderr[-2000:] or "Cannot allocate memory" in stderr[-2000:]:
        status = "memory"
    elif sig is not None:
        status = "killed"
    else:
        status = "ok" if code == 0 else "error"
    return SandboxResult(status, stdout, stderr, round(seconds, 4), code, sig_name, isolation)


class SandboxPool:
    """Runs many sandboxes in parallel on worker threads (each waits on its own child process, so
    the caller's thread, e.g. the decoding loop, never blocks). `submit` returns a Future."""

    def __init__(self, workers: int = 4, **defaults):
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers),
                                                               thread_name_prefix="jz3-sandbox")
        self._defaults = defaults

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
