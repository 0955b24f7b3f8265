"""The sandbox supervisor: runs one untrusted Python program and reports how it ended.

Started by `sandbox.run_python` as `python -I -S _supervisor.py SPEC_JSON` (standard library only:
it runs before and outside any site-packages). It prints nothing; its one result is a JSON object
on the file descriptor named in the spec. Two isolation modes:

- "namespaces": a child enters new user, mount, network, PID, IPC and UTS namespaces (this process,
  still outside, writes its uid/gid maps) and forks the namespace's PID 1. PID 1 first resets every
  signal to its default action, so the kernel's protection of a namespace init drops every signal
  the program sends it, and makes itself undumpable (no /proc/1/fd, no ptrace). It builds a minimal
  root file system and pivots into it (`_rootfs.py`), forks the program and waits for it. When
  PID 1 exits the kernel kills and reaps every process left in the namespace before this process's
  wait returns, so nothing outlives the call; the mounts vanish with the namespace.
- "rlimits" (not a sandbox; sandbox.py refuses it unless allowed): this process is a child
  subreaper, the program runs in its own session (as uid 65534 when started as root), and every
  descendant is killed and reaped at the end.

In both the program gets resource limits (CPU, address space, processes, open files, file size, no
core files), an empty environment, the seccomp filter of `_seccomp.py`, and runs under BOOTSTRAP,
which turns an uncaught MemoryError into the exit status `spec["memory_exit"]`.
"""

import ctypes
import importlib.util
import json
import os
import resource
import select
import signal
import sys
import time

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
SANDBOX_UID = 65534  # "nobody": the host user the program runs as when the supervisor is root
INNER_UID = 1000  # the program's uid inside its user namespace (when the supervisor is root)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 1, 4, 38, 24
PR_SET_CHILD_SUBREAPER, PR_SET_SECUREBITS = 36, 28
SECBITS_LOCKED_NOROOT = 0x2F  # NOROOT, NO_SETUID_FIXUP and their locks: uid 0 gets no capabilities

# Runs the program as __main__ (argv: program path, memory exit status). Only the way the process
# ends tells the evaluator what happened, so an uncaught MemoryError gets its own exit status; the
# traceback is printed as Python would, without this wrapper's frames.
BOOTSTRAP = """\
import sys
def _run(path, memory_exit):
    sys.argv[:] = [path]
    main = type(sys)("__main__")
    main.__file__, main.__builtins__ = path, __builtins__
    sys.modules["__main__"] = main
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as error:
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        sys.excepthook(type(error), error.with_traceback(tb), tb)
        sys.exit(memory_exit if isinstance(error, MemoryError) else 1)
_run(sys.argv[1], int(sys.argv[2]))
"""


def _load_sibling(name: str):
    """Import `name`.py from this directory by path (-I -S: no package, no sys.path entry)."""
    spec = importlib.util.spec_from_file_location(f"jz3_sandbox{name}", os.path.join(os.path.dirname(
        os.path.abspath(__file__)), f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SECCOMP, ROOTFS = _load_sibling("_seccomp"), _load_sibling("_rootfs")  # now: pivot_root hides this directory


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # leaving uid 0 clears every capability


def _drop_capabilities() -> None:
    """No capabilities now or after exec, even as uid 0 of the namespace."""
    for cap in range(64):
        if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    _check(LIBC.prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0), "securebits")
    _check(LIBC.capset(ctypes.byref(_CapHeader(0x20080522, 0)), (_CapData * 2)()), "capset")


def _default_signals() -> None:
    """Every signal back to its default action and unblocked (Python installs a SIGINT handler)."""
    for sig in signal.valid_signals():
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL, SIGSTOP and the C library's own real-time signals
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _set_limits(limits: dict) -> None:
    for name, value in [("RLIMIT_CPU", limits["cpu_s"]), ("RLIMIT_AS", limits["memory_bytes"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_FSIZE", limits["file_bytes"]), ("RLIMIT_CORE", 0)]:
        hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU first, then SIGKILL
        resource.setrlimit(getattr(resource, name), (value, hard))


def _exec_program(spec: dict, drop_privileges) -> None:
    """In the forked program process: default signals, a fresh session, limits, no privileges,
    seccomp, then exec the interpreter under BOOTSTRAP. Never returns."""
    try:
        _default_signals()
        os.setsid()
        _set_limits(spec["limits"])
        drop_privileges()
        os.chdir(spec["cwd"])
        os.closerange(3, 65536)
        SECCOMP.install()
        python = spec["python"]
        os.execve(python, [python, "-I", "-B", "-c", BOOTSTRAP, spec["program"], str(spec["memory_exit"])],
                  spec["env"])
    except BaseException as error:  # noqa: BLE001 - report any set-up failure, then die
        os.write(2, f"sandbox set-up failed: {error}\n".encode())
    os._exit(126)


def _wait_all(main_pid: int) -> int:
    """As PID 1 or subreaper: reap every child until `main_pid` ends; its wait status."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == main_pid:
            return status


def _encode_status(status: int) -> dict:
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit": os.WEXITSTATUS(status)}


def _namespace_init(spec: dict, report_fd: int) -> None:
    """PID 1 of the new PID namespace: unsignalable, build the root, run the program, report."""
    _default_signals()  # first: a Python handler would let the program's kill(1, SIGINT) through
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        _check(LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
        ROOTFS.build_root(spec, INNER_UID if spec["as_root"] else 0)
    except BaseException as error:  # noqa: BLE001
        os.write(report_fd, json.dumps({"setup_error": str(error)}).encode())
        os._exit(125)
    pid = os.fork()
    if pid == 0:
        _exec_program(spec, (lambda: _become(INNER_UID)) if spec["as_root"] else _drop_capabilities)
    status = _wait_all(pid)
    os.write(report_fd, json.dumps(_encode_status(status)).encode())
    os._exit(0)  # the kernel now kills and reaps everything left in the namespace


def _write_maps(pid: int, as_root: bool) -> None:
    uid, gid = os.geteuid(), os.getegid()
    if as_root:  # namespace root is host root (for set-up), the program host "nobody"
        uids, gids = f"0 {uid} 1\n{INNER_UID} {SANDBOX_UID} 1\n", f"0 {gid} 1\n{INNER_UID} {SANDBOX_UID} 1\n"
    else:
        uids, gids = f"0 {uid} 1\n", f"0 {gid} 1\n"
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(uids)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(gids)


def _read_json(fd: int, deadline: float | None) -> dict | None:
    chunks = []
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError:
        return None


def _namespace_child(spec: dict, ready_w: int, go_r: int, report_w: int) -> None:
    """The child that unshares, waits for its id maps, forks PID 1 and waits for it."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        _check(LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
                            | CLONE_NEWUTS), "unshare")
    except OSError as error:
        os.write(report_w, json.dumps({"setup_error": str(error)}).encode())
        os._exit(125)
    os.write(ready_w, b"u")
    if os.read(go_r, 1) != b"g":
        os._exit(125)
    init = os.fork()
    if init == 0:
        _namespace_init(spec, report_w)
    os.write(ready_w, init.to_bytes(8, "little"))
    os.close(report_w)
    _, status = os.waitpid(init, 0)
    os._exit(0 if os.WIFEXITED(status) else 1)


def run_namespaces(spec: dict, deadline: float) -> dict:
    """Namespaces mode: the child unshares, we map its ids, its child is PID 1 (see module doc)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:
        for fd in (ready_r, go_w, report_r):
            os.close(fd)
        _namespace_child(spec, ready_w, go_r, report_w)
    for fd in (ready_w, go_r, report_w):
        os.close(fd)
    init_pid = None
    if os.read(ready_r, 1) == b"u":
        _write_maps(child, spec["as_root"])
        os.write(go_w, b"g")
        raw = os.read(ready_r, 8)
        init_pid = int.from_bytes(raw, "little") if len(raw) == 8 else None
    result = _read_json(report_r, deadline)
    timed_out = result is None and time.monotonic() >= deadline
    if init_pid is not None:
        try:
            os.kill(init_pid, signal.SIGKILL)  # PID 1 gone: the kernel kills the whole namespace
        except ProcessLookupError:
            pass
    os.waitpid(child, 0)  # returns once PID 1, hence every process in the namespace, is gone
    return {**(result or {}), "timeout": timed_out}


def _children() -> list[int]:
    pids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def _kill_descendants() -> None:
    """As subreaper: orphans of the program were reparented to us; kill until none is left."""
    while pids := _children():
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in pids:
            try:
                os.waitpid(p, 0)
            except ChildProcessError:
                pass


def run_rlimits(spec: dict, deadline: float) -> dict:
    """Fallback without namespaces: subreaper + own session + uid 65534 when root + kill-all at the end."""
    _check(LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
    pid = os.fork()
    if pid == 0:
        _exec_program(spec, (lambda: _become(SANDBOX_UID)) if spec["as_root"] else (lambda: None))
    status, timed_out = None, False
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() >= deadline:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        else:
            time.sleep(0.005)
    _kill_descendants()
    return {**_encode_status(status), "timeout": timed_out}


def main() -> None:
    spec = json.loads(sys.argv[1])
    deadline = time.monotonic() + spec["timeout_s"]
    run = run_namespaces if spec["isolation"] == "namespaces" else run_rlimits
    result = run(spec, deadline)
    os.write(spec["result_fd"], json.dumps(result).encode())


if __name__ == "__main__":
    main()
