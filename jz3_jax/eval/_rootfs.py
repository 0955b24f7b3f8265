"""The program's minimal root file system (standard library only: `_supervisor.py` loads this file
by path and calls `build_root` in the sandbox's PID 1, inside its new user and mount namespaces).

Everything is assembled on a fresh tmpfs: the system directories, a few /etc files and the
interpreter's directories as read-only binds (symlinks such as /lib -> usr/lib stay symlinks), the
program itself, a minimal /dev, a fresh /proc, and one size-limited scratch tmpfs for the working
directory, /tmp and /dev/shm. Then PID 1 pivots into it and detaches the host's root, so no path
leads back to the host; every mount but the scratch ones is read-only and nosuid.
"""

import ctypes
import os
import platform
import stat

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH, AT_FDCWD, AT_RECURSIVE = 2, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 1, 2
SYS_MOUNT_SETATTR = 442  # same on x86_64 and aarch64
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    _check(LIBC.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _set_attrs(path: str, attr_set: int, attr_clr: int, recursive: bool) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check(LIBC.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE if recursive else 0,
                        ctypes.byref(attr), ctypes.sizeof(attr)), f"mount_setattr {path}")


_OWN_DEVICES: set[int] = set()  # the root's tmpfs and the scratch tmpfs: the only places parents are made


def _inside(root: str, path: str) -> str:
    """Where the program's `path` lies under `root`, its parent directories created on the sandbox's
    own tmpfs (the root's, or the scratch one for an interpreter under /tmp): never through a
    symlink or on a bound host directory (that would write to the host)."""
    current = root
    for part in path.strip("/").split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_dev not in _OWN_DEVICES:
            raise OSError(f"refusing to create {path} through {current}")
    return os.path.join(root, path.strip("/"))


def _bind(source: str, target: str) -> None:
    """Bind host `source` (a file, or a directory with its submounts) at the new `target`."""
    if os.path.isdir(source):
        os.mkdir(target, 0o755)
    else:
        open(target, "x").close()
    _mount(source, target, None, MS_BIND | MS_REC)


def _replicate(root: str, path: str) -> None:
    """Host `path` in the new root: the same symlink, or a bind of it; nothing where the host lacks it."""
    if os.path.islink(path):
        os.symlink(os.readlink(path), _inside(root, path))
    elif os.path.exists(path):
        _bind(path, _inside(root, path))


def _write(root: str, path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(_inside(root, path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with open(fd, "wb") as f:
        f.write(data)


def _make_dev(root: str, devices: list[str]) -> None:
    """/dev: binds of a few harmless host device nodes and the usual /proc/self/fd links."""
    for name in devices:
        _bind(f"/dev/{name}", _inside(root, f"/dev/{name}"))
    for name, target in DEV_LINKS.items():
        os.symlink(target, _inside(root, f"/dev/{name}"))


def _make_scratch(root: str, spec: dict, uid: int) -> list[str]:
    """One tmpfs of spec["tmpfs_bytes"] holding the working directory (owned by `uid`), /tmp and
    /dev/shm, or the host directory spec["workdir"] bound as the working directory; the paths that
    stay writable."""
    scratch = spec["scratch"]
    _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={spec['tmpfs_bytes']},nr_inodes={spec['tmpfs_inodes']},mode=0755")
    _OWN_DEVICES.add(os.lstat(scratch).st_dev)
    for name, mode in (("home", 0o700), ("tmp", 0o1777), ("shm", 0o1777)):
        os.mkdir(os.path.join(scratch, name))
        os.chmod(os.path.join(scratch, name), mode)
    os.chown(os.path.join(scratch, "home"), uid, uid)
    pairs = [(spec["workdir"] or os.path.join(scratch, "home"), spec["cwd"]),
             (os.path.join(scratch, "tmp"), "/tmp"), (os.path.join(scratch, "shm"), "/dev/shm")]
    for source, target in pairs:
        _bind(source, _inside(root, target))
    return [target for _, target in pairs]


def _pivot(root: str) -> None:
    """Make `root` the file system root and detach the host's (pivot_root(2)'s "." "." idiom)."""
    os.chdir(root)
    _check(LIBC.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(LIBC.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def build_root(spec: dict, program_uid: int) -> None:
    """The program's whole file system, on a fresh tmpfs at spec["root"]: read-only binds of the
    system directories, a few /etc files, the program itself, /dev (`_make_dev`), a fresh /proc,
    the scratch tmpfs (`_make_scratch`) and the interpreter's directories (bound last, so that one
    under /tmp sits on the scratch tmpfs instead of being hidden by it). Then pivot into it and make
    every mount read-only and nosuid except the scratch ones."""
    root = spec["root"]
    os.umask(0o022)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['root_bytes']},mode=0755")
    _OWN_DEVICES.add(os.lstat(root).st_dev)
    for path in spec["system_paths"]:
        _replicate(root, path)
    for path, text in spec["files"].items():
        _write(root, path, text.encode())
    with open(spec["script"], "rb") as f:
        _write(root, spec["program"], f.read())
    _make_dev(root, spec["devices"])
    proc = _inside(root, "/proc")
    os.mkdir(proc, 0o555)
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    writable = _make_scratch(root, spec, program_uid)
    for source, target in spec["binds"]:  # after the scratch mounts: an interpreter may live under /tmp
        _bind(source, _inside(root, target))
    _pivot(root)
    _set_attrs("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, recursive=True)
    for path in writable:
        _set_attrs(path, 0, MOUNT_ATTR_RDONLY, recursive=False)
