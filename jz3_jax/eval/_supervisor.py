"""The sandbox supervisor: runs one untrusted Python program and reports how it ended.

Started by `sandbox.run_python` as `python -I -S _supervisor.py SPEC_JSON` (standard library only:
it runs before and outside any site-packages). It prints nothing; its one result is a JSON line on
the file descriptor named in the spec. Two isolation modes:

- "namespaces": a child enters new user, mount, network, PID, IPC and UTS namespaces (this process,
  still outside, writes its uid/gid maps); the child forks the namespace's PID 1, which makes the
  file system read-only except the working directory, hides home and temp directories, drops every
  privilege, forks the program and waits for it. When PID 1 exits the kernel kills and reaps every
  process left in the namespace before this process's wait returns, so nothing outlives the call.
- "rlimits": no namespaces; this process is a child subreaper, the program runs in its own session
  (as uid 65534 when started as root), and every descendant is killed and reaped at the end.

Both modes set resource limits (CPU, address space, processes, open files, file size, no core
files), an empty environment and a seccomp filter that refuses IPv4/IPv6 sockets.
"""

import ctypes
import json
import os
import platform
import resource
import select
import signal
import sys
import time

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
SANDBOX_UID = 65534  # "nobody": the host user the program runs as when the supervisor is root
INNER_UID = 1000  # the program's uid inside its user namespace
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH, MOUNT_ATTR_RDONLY = 1, 4, 1
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # same on x86_64 and aarch64
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 38, 22, 24
PR_SET_CHILD_SUBREAPER, PR_SET_SECUREBITS = 36, 28
SECBITS_LOCKED_NOROOT = 0x2F  # NOROOT, NO_SETUID_FIXUP and their locks: uid 0 gets no capabilities


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    enc = lambda s: s.encode() if isinstance(s, str) else s
    _check(LIBC.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _set_readonly(path: str, readonly: bool, recursive: bool) -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    _check(LIBC.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE if recursive else 0,
                        ctypes.byref(attr), ctypes.sizeof(attr)), f"mount_setattr {path}")


def _clone_tree(path: str) -> int:
    return _check(LIBC.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | AT_RECURSIVE),
                  f"open_tree {path}")


def _place_tree(fd: int, path: str) -> None:
    _check(LIBC.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH),
           f"move_mount {path}")
    os.close(fd)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _build_filesystem(spec: dict) -> None:
    """Read-only everything, hidden directories replaced by empty tmpfs (keeping the paths the
    interpreter needs), and the working directory the one writable place."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    keep = [os.path.realpath(p) for p in spec["keep"]] + [spec["workdir"]]
    for hidden in spec["hide"]:
        if not os.path.isdir(hidden) or os.path.islink(hidden):
            continue
        inside = sorted({p for p in keep if _under(p, hidden) and p != hidden and os.path.exists(p)})
        inside = [p for p in inside if not any(q != p and _under(p, q) for q in inside)]
        trees = [(p, _clone_tree(p)) for p in inside]
        _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for path, fd in trees:
            os.makedirs(path, exist_ok=True) if os.path.isdir(f"/proc/self/fd/{fd}") else open(path, "a").close()
            _place_tree(fd, path)
    workdir = spec["workdir"]
    if not any(_under(workdir, h) for h in spec["hide"]):
        _place_tree(_clone_tree(workdir), workdir)  # its own mount, so it can stay writable
    _set_readonly("/", True, recursive=True)
    _set_readonly(workdir, False, recursive=False)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_privileges(inner_uid: int | None) -> None:
    """No capabilities now or after exec, even as uid 0 of the namespace; no new privileges ever."""
    if inner_uid is not None:
        os.setgroups([])
        os.setgid(inner_uid)
        os.setuid(inner_uid)  # leaving uid 0 clears every capability
    else:
        for cap in range(64):
            if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break  # past the last capability this kernel knows
        _check(LIBC.prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0), "securebits")
        data = (_CapData * 2)()
        _check(LIBC.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data), "capset")
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _refuse_inet_sockets() -> None:
    """seccomp: socket(AF_INET or AF_INET6, ...) fails with EACCES; everything else is allowed."""
    arch, nr = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}.get(platform.machine(), (None, None))
    if arch is None:
        return
    ld, jeq, ret = 0x20, 0x15, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 13
    program = [(ld, 0, 0, 4), (jeq, 0, 5, arch), (ld, 0, 0, 0), (jeq, 0, 3, nr), (ld, 0, 0, 16),
               (jeq, 2, 0, 2), (jeq, 1, 0, 10), (ret, 0, 0, allow), (ret, 0, 0, deny)]
    filters = (_SockFilter * len(program))(*[_SockFilter(*f) for f in program])
    prog = _SockFprog(len(program), filters)
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(LIBC.prctl(PR_SET_SECCOMP, 2, ctypes.byref(prog), 0, 0), "seccomp")


def _exec_program(spec: dict) -> None:
    """In the forked program process: limits, seccomp, a fresh session, then exec the interpreter."""
    try:
        os.setsid()
        limits = spec["limits"]
        for name, value in [("RLIMIT_CPU", limits["cpu_s"]), ("RLIMIT_AS", limits["memory_bytes"]),
                            ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_NOFILE", limits["open_files"]),
                            ("RLIMIT_FSIZE", limits["file_bytes"]), ("RLIMIT_CORE", 0)]:
            hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU first, then SIGKILL
            resource.setrlimit(getattr(resource, name), (value, hard))
        os.chdir(spec["workdir"])
        _refuse_inet_sockets()
        os.closerange(3, 65536)
        os.execve(spec["python"], [spec["python"], "-I", "-B", spec["script"]], spec["env"])
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
    """PID 1 of the new PID namespace: build the file system, drop privileges, run the program."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        _build_filesystem(spec)
        _drop_privileges(INNER_UID if spec["map_program_uid"] else None)
    except BaseException as error:  # noqa: BLE001
        os.write(report_fd, json.dumps({"setup_error": str(error)}).encode())
        os._exit(125)
    pid = os.fork()
    if pid == 0:
        _exec_program(spec)
    status = _wait_all(pid)
    os.write(report_fd, json.dumps(_encode_status(status)).encode())
    os._exit(0)  # the kernel now kills and reaps everything left in the namespace


def _write_maps(pid: int, map_program_uid: bool) -> None:
    uid, gid = os.geteuid(), os.getegid()
    if map_program_uid:  # root: namespace root is host root (for set-up), the program host "nobody"
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


def run_namespaces(spec: dict, deadline: float) -> dict:
    """Namespaces mode: the child unshares, we map its ids, its child is PID 1 (see module doc)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        for fd in (ready_r, go_w, report_r):
            os.close(fd)
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
    for fd in (ready_w, go_r, report_w):
        os.close(fd)
    init_pid = None
    if os.read(ready_r, 1) == b"u":
        _write_maps(child, spec["map_program_uid"])
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


def run_rlimits(spec: dict, deadline: float) -> dict:
    """Fallback without namespaces: subreaper + own session + uid 65534 when root + kill-all at the end."""
    _check(LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
    pid = os.fork()
    if pid == 0:
        if spec["drop_to_nobody"]:
            os.setgroups([])
            os.setgid(SANDBOX_UID)
            os.setuid(SANDBOX_UID)
        _exec_program(spec)
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
    while True:  # orphans of the program were reparented to us: kill until none is left
        pids = _children()
        if not pids:
            break
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
    return {**_encode_status(status), "timeout": timed_out}


def main() -> None:
    spec = json.loads(sys.argv[1])
    deadline = time.monotonic() + spec["timeout_s"]
    run = run_namespaces if spec["isolation"] == "namespaces" else run_rlimits
    result = run(spec, deadline)
    os.write(spec["result_fd"], json.dumps(result).encode())


if __name__ == "__main__":
    main()
