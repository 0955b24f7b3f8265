"""The seccomp filter every sandboxed program runs under (standard library only).

`_supervisor.py` loads this file by path (it runs as `python -I -S`, outside any package) and calls
`install()` in the program's process just before exec; `sandbox.py` imports it for its docs/tests.

The filter, in order:

1. `arch` must be the native one (x86_64 or aarch64), else SECCOMP_RET_KILL_PROCESS: the i386
   `int 0x80`/`sysenter` entry and aarch32 compat have different syscall numbers and would
   otherwise walk past every rule below. On x86_64 the x32 ABI (numbers >= 0x40000000) is killed too.
2. `DENIED` syscalls fail with EPERM (see the reasons next to each).
3. `clone3` fails with ENOSYS (its flags sit behind a pointer seccomp cannot read; glibc then falls
   back to `clone`), and `clone` with any namespace flag fails with EPERM.
4. `socket` and `socketpair` work only for AF_UNIX (EACCES otherwise).
5. Everything else is allowed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
AF_UNIX = 1
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# name: (x86_64 number, aarch64 number or None where the syscall does not exist there)
DENIED = {
    # io_uring runs its operations (IORING_OP_SOCKET, OPENAT, ...) without passing this filter
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    # memory outside RLIMIT_AS: memfd pages written with write(), SysV/POSIX IPC objects that
    # outlive their creator (on the host's IPC namespace in the rlimits fallback)
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "shmget": (29, 194), "msgget": (68, 186),
    "semget": (64, 190), "mq_open": (240, 180),
    # other processes' memory and file descriptors
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "process_madvise": (440, 440), "pidfd_getfd": (438, 438),
    # kernel attack surface an unprivileged program has no use for
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "open_by_handle_at": (304, 265), "modify_ldt": (154, None),
    "uselib": (134, None),
    # namespaces and mounts (a nested user namespace would hand the program capabilities there)
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "open_tree_attr": (467, 467),
}
CLONE, CLONE3 = (56, 220), (435, 435)
SOCKET, SOCKETPAIR = (41, 198), (53, 199)

# classic BPF opcodes and seccomp_data offsets (little-endian: the low half of args[0] first)
LD_W_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
NR_OFFSET, ARCH_OFFSET, ARG0_OFFSET = 0, 4, 16


def _assemble(program: list[tuple]) -> list[tuple[int, int, int, int]]:
    """Resolve labels: entries are (op, k, true_label, false_label) or ("label", name); jumps go
    forward only, None meaning the next instruction."""
    labels, position = {}, 0
    for entry in program:
        if entry[0] == "label":
            labels[entry[1]] = position
        else:
            position += 1
    out = []
    for entry in program:
        if entry[0] == "label":
            continue
        op, k, true, false = entry
        here = len(out) + 1
        jt = 0 if true is None else labels[true] - here
        jf = 0 if false is None else labels[false] - here
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError(f"seccomp jump out of range at instruction {len(out)}")
        out.append((op, jt, jf, k))
    return out


def build(machine: str | None = None) -> bytes:
    """The filter for `machine` (default: this one) as packed `struct sock_filter`s."""
    machine = machine or platform.machine()
    if machine not in AUDIT_ARCH:
        raise OSError(errno.ENOSYS, f"the sandbox has no seccomp filter for {machine}")
    col = 0 if machine == "x86_64" else 1
    nr = lambda pair: pair[col]  # noqa: E731
    program: list[tuple] = [(LD_W_ABS, ARCH_OFFSET, None, None), (JEQ, AUDIT_ARCH[machine], None, "kill"),
                            (LD_W_ABS, NR_OFFSET, None, None)]
    if machine == "x86_64":
        program.append((JGE, X32_SYSCALL_BIT, "kill", None))
    program += [(JEQ, n, "eperm", None) for n in sorted({nr(p) for p in DENIED.values()} - {None})]
    program += [(JEQ, nr(CLONE3), "enosys", None), (JEQ, nr(SOCKET), "socket", None),
                (JEQ, nr(SOCKETPAIR), "socket", None), (JEQ, nr(CLONE), "clone", None),
                (RET, RET_ALLOW, None, None),
                ("label", "socket"), (LD_W_ABS, ARG0_OFFSET, None, None), (JEQ, AF_UNIX, "allow", "eacces"),
                ("label", "clone"), (LD_W_ABS, ARG0_OFFSET, None, None),
                (JSET, CLONE_NAMESPACE_FLAGS, "eperm", "allow"),
                ("label", "allow"), (RET, RET_ALLOW, None, None),
                ("label", "kill"), (RET, RET_KILL_PROCESS, None, None),
                ("label", "eperm"), (RET, RET_ERRNO | errno.EPERM, None, None),
                ("label", "eacces"), (RET, RET_ERRNO | errno.EACCES, None, None),
                ("label", "enosys"), (RET, RET_ERRNO | errno.ENOSYS, None, None)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in _assemble(program))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Apply the filter to the calling thread (and everything it execs or forks), for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    code = build()
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    for args, what in [((pr_set_no_new_privs, 1, 0, 0, 0), "no_new_privs"),
                       ((pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0), "seccomp")]:
        if libc.prctl(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
