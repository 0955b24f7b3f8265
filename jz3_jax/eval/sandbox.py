"""The one way the project runs model-written code: `run_python` in a fresh, isolated process.

Each call starts `_supervisor.py` (standard library only) in its own session with an empty
environment. With "namespaces" isolation (the default where the kernel allows unprivileged user
namespaces) the program gets its own user, mount, network (only a down `lo`), PID, IPC and UTS
namespaces and a minimal root file system built for it alone:

    /usr /bin /sbin /lib /lib64        the host's, read-only (symlinks stay symlinks)
    /etc/ld.so.cache /etc/localtime    the host's, read-only; /etc/passwd and /etc/group are written
    the interpreter's directories      read-only binds at their host paths (a venv and its base)
    /program.py                        the program, read-only
    /dev                               null zero full random urandom, fd/stdin/stdout/stderr links
    /proc                              a fresh one: only the sandbox's processes
    /sandbox (cwd, HOME), /tmp, /dev/shm   one private tmpfs of `tmpfs_mb`, gone with the namespace

and nothing else of the host (no /home, /root, /run, /var, host /tmp or /dev/shm, no project
checkout). The program holds no capabilities (it runs as host uid 65534 when the evaluator is
root), its PID 1 cannot be signalled, and PID 1's exit makes the kernel kill and reap every process
of the namespace before the call returns. "rlimits" isolation (no namespaces) is not a sandbox:
it runs only when the caller passes `allow_unsandboxed=True` (`eval.allow_unsandboxed=true`).
Both set CPU, address space, process, open-file and file-size limits and the seccomp filter of
`_seccomp.py` (native syscall ABI only, no io_uring, memfd, ptrace, SysV IPC, namespaces or mounts,
AF_UNIX sockets only). The status comes from how the process ended, never from its output.

See the README's sandbox section for what this does and does not protect against.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import itertools
import json
import logging
import math
import os
import platform
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterator

SUPERVISOR = Path(__file__).with_name("_supervisor.py")
STATUSES = ("ok", "error", "timeout", "memory", "killed")
SANDBOX_UID = 65534
MEMORY_EXIT = 109  # exit status of a program that ended with an uncaught MemoryError (see _supervisor.BOOTSTRAP)
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
HOME = "/sandbox"  # the program's working directory inside the namespaces sandbox
PROGRAM = "/program.py"
ETC_FILES = {  # the only users and groups the program can look up
    "/etc/passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:1000:1000:sandbox:/sandbox:/usr/sbin/nologin\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "/etc/group": "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n",
}
ALLOW_FLAG = "eval.allow_unsandboxed=true"
SECCOMP_MACHINES = ("x86_64", "aarch64")  # those _seccomp.py has a filter for (stdlib-only sandbox.py copies run too)
_SIGNAL_NAMES = {s.value: s.name for s in signal.Signals}
log = logging.getLogger(__name__)


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up or refused to run (not a failure of the program)."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """How one program ended: `status` is ok (exit 0), error (non-zero exit), timeout (wall clock or
    CPU limit), memory (an uncaught MemoryError: exit status MEMORY_EXIT) or killed (ended by a
    signal, e.g. SIGSYS from the seccomp filter); output is truncated."""

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
    """"namespaces" where available, else "rlimits" (which runs only when explicitly allowed)."""
    return "namespaces" if namespaces_available() else "rlimits"


def resolve_isolation(isolation: str = "auto", allow_unsandboxed: bool = False) -> str:
    """The isolation a call will use; SandboxError when that is "rlimits" and not explicitly allowed."""
    if isolation == "auto":
        isolation = default_isolation()
    if isolation not in ("namespaces", "rlimits"):
        raise ValueError(f"isolation must be auto, namespaces or rlimits, got {isolation!r}")
    if isolation == "rlimits":
        if not allow_unsandboxed:
            raise SandboxError("isolation=rlimits (or auto where user namespaces are unavailable) is not a "
                               "sandbox: the program would see the host's files, network and processes. Set "
                               f"{ALLOW_FLAG} (allow_unsandboxed=True) to run model code that way anyway")
        _warn_unsandboxed()
    return isolation


@functools.lru_cache(maxsize=1)
def _warn_unsandboxed() -> None:
    log.warning("SANDBOX DISABLED: model-written code runs with isolation=rlimits, which is NOT a sandbox "
                "(host files, host network, host processes reachable; only rlimits and seccomp apply)")


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 1024, max_output_chars: int = 4096,
               max_processes: int = 16, max_open_files: int = 64, max_file_mb: int = 16, tmpfs_mb: int = 64,
               workdir: str | os.PathLike | None = None, isolation: str = "auto",
               allow_unsandboxed: bool = False, python: str | None = None) -> SandboxResult:
    """Run `code` as a Python program in the sandbox and return how it ended.

    `timeout_s` is wall-clock time (the CPU limit is the same, rounded up); `memory_mb` caps the
    address space (per process); `max_processes`, `max_open_files` and `max_file_mb` cap processes
    (of the program's user), file descriptors and the size of any file written (stdout included).
    With namespaces the working directory, /tmp and /dev/shm share one private tmpfs of `tmpfs_mb`
    that vanishes with the call. `workdir` (an existing host directory, kept: for tests and
    debugging) is bound as the working directory instead, and what the program writes there stays
    on the host; with rlimits the working directory is a fresh host temp directory (removed) or
    `workdir`. `isolation` is "auto", "namespaces" or "rlimits"; rlimits is refused unless
    `allow_unsandboxed`. `python` is the interpreter that runs the program (default: this one,
    with its packages). Safe to call from many threads at once.
    """
    isolation = resolve_isolation(isolation, allow_unsandboxed)
    return _run(code, timeout_s=timeout_s, memory_mb=memory_mb, max_output_chars=max_output_chars,
                max_processes=max_processes, max_open_files=max_open_files, max_file_mb=max_file_mb,
                tmpfs_mb=tmpfs_mb, workdir=workdir, isolation=isolation, python=python)


@functools.lru_cache(maxsize=8)
def _interpreter_dirs(python: str) -> tuple[str, ...]:
    """The directories `python` needs (its prefixes, standard library and site-packages), resolved."""
    if python == sys.executable:
        found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                 *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib"))]
    else:
        query = ("import json, sys, sysconfig; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
                 "sys.base_exec_prefix, *(sysconfig.get_paths().get(k) for k in "
                 "('stdlib', 'platstdlib', 'purelib', 'platlib'))]))")
        out = subprocess.run([python, "-I", "-c", query], capture_output=True, text=True, timeout=60, check=True)
        found = json.loads(out.stdout)
    return tuple(sorted({os.path.realpath(p) for p in found if p and os.path.isdir(p)}))


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def interpreter_binds(python: str) -> list[tuple[str, str]]:
    """(host source, path inside) pairs that make `python` runnable in the minimal root: its
    directories at their own paths, and the directory it is called by (a venv's bin) where that is
    reached through a symlink. Paths under the system directories (bound anyway) are left out, and
    so is anything under another bind (the outer one already holds it)."""
    pairs = [(d, d) for d in _interpreter_dirs(python)]
    called_from = os.path.dirname(os.path.abspath(python))
    pairs += [(os.path.realpath(called_from), called_from), (os.path.dirname(os.path.realpath(python)),) * 2]
    system = [p for s in SYSTEM_PATHS for p in (s, os.path.realpath(s))]
    kept: list[tuple[str, str]] = []
    for source, target in sorted(set(pairs), key=lambda p: (len(p[1]), p)):
        if any(_under(target, s) for s in system) or any(_under(target, t) for _, t in kept):
            continue
        kept.append((source, target))
    return kept


def _world_reachable(path: str) -> bool:
    """Whether any user may run `path` (every directory above it searchable by others)."""
    real = os.path.realpath(path)
    parts = Path(real).parents
    return all(os.stat(p).st_mode & 0o001 for p in parts) and bool(os.stat(real).st_mode & 0o005)


def _env(home: str, tmp: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MPLBACKEND": "Agg", "MPLCONFIGDIR": os.path.join(tmp, "matplotlib")}


def _namespaces_spec(private: str, script: str, python: str, workdir: str | None, tmpfs_mb: int) -> dict:
    """What the supervisor needs to build the minimal root (see `_rootfs.build_root`)."""
    for name in ("root", "scratch"):
        os.mkdir(os.path.join(private, name))
    return {"root": os.path.join(private, "root"), "scratch": os.path.join(private, "scratch"),
            "root_bytes": os.path.getsize(script) + (1 << 20), "tmpfs_bytes": int(tmpfs_mb) << 20,
            "tmpfs_inodes": 16384, "system_paths": list(SYSTEM_PATHS), "devices": list(DEVICES),
            "binds": interpreter_binds(python), "files": ETC_FILES, "workdir": workdir,
            "program": PROGRAM, "cwd": HOME, "env": _env(HOME, "/tmp")}


def _rlimits_spec(private: str, script: str, python: str, box: str, as_root: bool) -> dict:
    """The fallback runs the host script in a host directory; as root, as uid 65534."""
    if as_root:
        if not _world_reachable(python):
            # As root the program could only run as root: kill(-1) would end the host.
            raise SandboxError(f"rlimits isolation as root needs an interpreter that uid {SANDBOX_UID} can run; "
                               f"{os.path.realpath(python)} is not reachable by others (use namespaces)")
        os.chown(box, SANDBOX_UID, SANDBOX_UID)
        os.chmod(private, 0o755)
        os.chmod(script, 0o644)
    return {"program": script, "cwd": box, "env": _env(box, box)}


def _run(code: str, *, timeout_s: float, memory_mb: int, max_output_chars: int, max_processes: int = 16,
         max_open_files: int = 64, max_file_mb: int = 16, tmpfs_mb: int = 64, workdir=None, isolation: str,
         python: str | None = None) -> SandboxResult:
    if platform.machine() not in SECCOMP_MACHINES:
        raise SandboxError(f"no seccomp filter for {platform.machine()}: the sandbox runs on x86_64 and aarch64 only")
    private = tempfile.mkdtemp(prefix="jz3_sandbox_")  # the program and its output: not the program's to write
    own_box = isolation == "rlimits" and workdir is None
    if own_box:
        box = tempfile.mkdtemp(prefix="jz3_box_")
    else:
        box = os.path.realpath(workdir) if workdir is not None else None
    try:
        script = os.path.join(private, "main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        as_root, python = os.geteuid() == 0, os.path.abspath(python or sys.executable)
        if isolation == "namespaces":
            if box and as_root:
                os.chown(box, SANDBOX_UID, SANDBOX_UID)
            layout = _namespaces_spec(private, script, python, box, tmpfs_mb)
        else:
            layout = _rlimits_spec(private, script, python, box, as_root)
        result_r, result_w = os.pipe()
        spec = {
            **layout, "isolation": isolation, "timeout_s": float(timeout_s), "result_fd": result_w,
            "python": python, "script": script, "as_root": as_root, "memory_exit": MEMORY_EXIT,
            "limits": {"cpu_s": max(1, math.ceil(timeout_s)), "memory_bytes": int(memory_mb) << 20,
                       "processes": int(max_processes), "open_files": int(max_open_files),
                       "file_bytes": int(max_file_mb) << 20},
        }
        return _supervise(spec, private, result_r, result_w, max_output_chars)
    finally:
        remove_tree(private)
        if own_box:
            remove_tree(box)


def _supervise(spec: dict, private: str, result_r: int, result_w: int, max_output_chars: int) -> SandboxResult:
    """Start the supervisor, wait for its report, and read the program's output."""
    out_path, err_path = os.path.join(private, "stdout"), os.path.join(private, "stderr")
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", str(SUPERVISOR), json.dumps(spec)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env={}, cwd=private,
                                start_new_session=True, pass_fds=(result_w,))
    os.close(result_w)
    try:
        raw = _read_all(result_r, spec["timeout_s"] + 30.0)
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
        raise SandboxError(f"sandbox set-up failed ({spec['isolation']}): {report['setup_error']}")
    if not report.get("timeout") and "exit" not in report and "signal" not in report:
        raise SandboxError("the sandbox's PID 1 ended without saying how the program ended")
    return _result(report, stdout, stderr, seconds, spec["isolation"])


def remove_tree(path: str | os.PathLike) -> None:
    """Delete `path` and everything under it at any depth, without recursion or following symlinks:
    each directory's entries are moved up into `path` until it is flat (shutil.rmtree raises
    RecursionError on a 3,000-deep tree)."""
    path = os.fspath(path)
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
    except FileNotFoundError:
        return
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    names = itertools.count()
    try:
        while entries := os.listdir(top):
            for name in entries:
                _remove_entry(top, name, names)
    finally:
        os.close(top)
    os.rmdir(path)


def _remove_entry(top: int, name: str, names: Iterator[int]) -> None:
    """Remove `name` in directory `top`, or move its children up into `top` and remove it."""
    if not _is_dir(top, name):
        os.unlink(name, dir_fd=top)
        return
    try:
        os.rmdir(name, dir_fd=top)
        return
    except OSError as error:
        if error.errno != errno.ENOTEMPTY:
            raise
    _make_ours(top, name)
    inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
    try:
        for child in os.listdir(inner):
            if _is_dir(inner, child):
                _make_ours(inner, child)  # moving a directory rewrites its "..": it must be writable
            os.rename(child, _free_name(top, names), src_dir_fd=inner, dst_dir_fd=top)
    finally:
        os.close(inner)
    os.rmdir(name, dir_fd=top)


def _free_name(top: int, names: Iterator[int]) -> str:
    """A name not yet taken in directory `top`."""
    for n in names:
        try:
            os.stat(f".jz3_rm_{n}", dir_fd=top, follow_symlinks=False)
        except FileNotFoundError:
            return f".jz3_rm_{n}"
    raise AssertionError("unreachable: `names` is endless")


def _is_dir(parent: int, name: str) -> bool:
    return stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)


def _make_ours(parent: int, name: str) -> None:
    """Mode 0700 for directory `name` (the program may have made it unreadable), set through its
    own handle: a chmod by path could follow a symlink another process swapped in."""
    handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        os.chmod(f"/proc/self/fd/{handle}", 0o700)
    finally:
        os.close(handle)


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
    """The status from how the program's process ended (never from what it printed)."""
    code, sig = report.get("exit"), report.get("signal")
    sig_name = _SIGNAL_NAMES.get(sig, str(sig)) if sig is not None else None
    if report.get("timeout") or sig == signal.SIGXCPU:
        status = "timeout"
    elif sig is not None:
        status = "killed"
    elif code == MEMORY_EXIT:
        status = "memory"
    else:
        status = "ok" if code == 0 else "error"
    return SandboxResult(status, stdout, stderr, round(seconds, 4), code, sig_name, isolation)
