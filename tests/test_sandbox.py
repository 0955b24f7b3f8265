"""The sandbox stops each hostile program within its limits, reports a failed run, and the caller goes on.

Each escape test also checks that the host is unchanged afterwards: no process of the program left
(found by the PID namespace or pid the program prints first), no file or directory left in the
host's temp directories, no byte at the host servers it tried to reach.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from jz3_jax.eval import sandbox
from jz3_jax.eval.sandbox_pool import SandboxPool



def _kernel_allows_user_namespaces() -> bool:
    """Whether this kernel lets us unshare user, mount, PID and network namespaces at all (a
    broken sandbox must fail its tests, not skip them)."""
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "os._exit(0 if libc.unshare(0x10000000 | 0x00020000 | 0x20000000 | 0x40000000) == 0 else 1)")
    return subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


needs_namespaces = pytest.mark.skipif(not _kernel_allows_user_namespaces(),
                                      reason="unprivileged user namespaces are not available here")
x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 machine code")


def _rlimits_python() -> str | None:
    """An interpreter the rlimits fallback may use: it refuses to run as root when uid 65534 cannot
    start the interpreter, so as root with a private venv the tests use the system python."""
    if os.geteuid() != 0 or sandbox._world_reachable(sys.executable):
        return sys.executable
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") and sandbox._world_reachable("/usr/bin/python3") \
        else None


BOTH = [pytest.param("namespaces", marks=needs_namespaces), pytest.param("rlimits", marks=pytest.mark.skipif(
    _rlimits_python() is None, reason="rlimits fallback as root needs an interpreter uid 65534 can run"))]


def run_python(code: str, **kw):
    """`sandbox.run_python`, with the rlimits fallback allowed and on an interpreter it accepts."""
    if kw.get("isolation") == "rlimits":
        kw.setdefault("python", _rlimits_python())
        kw.setdefault("allow_unsandboxed", True)
    return sandbox.run_python(code, **kw)


# The first line of a program whose processes are looked for afterwards (see _left_behind).
WHO = "import os\nprint('WHO', os.readlink('/proc/self/ns/pid'), os.getpid(), flush=True)\n"


def _left_behind(stdout: str) -> list[int]:
    """Host pids still alive from the run that printed WHO: every process of its PID namespace, or
    (rlimits: the host's namespace) the program's own pid."""
    match = re.search(r"^WHO (\S+) (\d+)$", stdout, re.M)
    assert match, stdout
    namespace, pid = match.group(1), int(match.group(2))
    if namespace != os.readlink("/proc/self/ns/pid"):
        found = []
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{p}/ns/pid") == namespace:
                    found.append(int(p))
            except OSError:
                pass
        return found
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [pid] if b"__main__" in f.read() else []  # the sandbox's bootstrap, not a reused pid
    except OSError:
        return []


def _temp_entries() -> set[str]:
    """Entries of the host's temp directories that a sandbox (or its program) could have left."""
    found = set()
    for top in {tempfile.gettempdir(), "/tmp", "/dev/shm"}:
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            try:
                foreign = os.lstat(path).st_uid == sandbox.SANDBOX_UID
            except OSError:
                continue
            if foreign or name.startswith(("jz3_sandbox_", "jz3_box_")) or "probe" in name:
                found.add(path)
    return found


@pytest.fixture
def host_temp_unchanged():
    """Fails the test if it leaves a sandbox directory or a program's file in the host temp dirs."""
    before = _temp_entries()
    yield
    assert _temp_entries() - before == set()


@pytest.fixture
def sandbox_copy():
    """The sandbox's files copied where any user can read them (for runs as uid 65534); its sandbox.py."""
    copy = Path(tempfile.mkdtemp(prefix="jz3_test_copy_"))
    for name in ("sandbox.py", "_supervisor.py", "_seccomp.py", "_rootfs.py"):
        shutil.copy(Path(sandbox.__file__).with_name(name), copy / name)
    os.chmod(copy, 0o755)
    yield str(copy / "sandbox.py")
    shutil.rmtree(copy)


class Listener:
    """A host server the program must not reach: TCP on 127.0.0.1, or a unix socket (stream or
    datagram, at a world-writable path or in the abstract namespace)."""

    def __init__(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, path: str | None = None):
        self.sock, self.path = socket.socket(family, kind), path
        if family == socket.AF_INET:
            self.sock.bind(("127.0.0.1", 0))
            self.address = self.sock.getsockname()[1]
        else:
            self.sock.bind(path)
            self.address = path
            if not path.startswith("\0"):
                os.chmod(path, 0o777)
        if kind == socket.SOCK_STREAM:
            self.sock.listen(8)
        self.sock.setblocking(False)

    def received(self) -> bool:
        """Whether anything connected or sent a byte (checked once the program has ended)."""
        try:
            if self.sock.type == socket.SOCK_STREAM:
                self.sock.accept()
            else:
                self.sock.recv(16)
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.sock.close()
        if self.path and not self.path.startswith("\0"):
            os.unlink(self.path)


def _still_works(isolation: str) -> None:
    result = run_python("print(6 * 7)", isolation=isolation)
    assert result.status == "ok" and result.stdout.strip() == "42", result


@needs_namespaces
def test_the_namespace_sandbox_is_the_default_where_the_kernel_allows_it():
    assert sandbox.namespaces_available() and sandbox.default_isolation() == "namespaces"
    assert run_python("print(1)").isolation == "namespaces"


@pytest.mark.parametrize("isolation", BOTH)
def test_a_plain_program_runs_with_an_empty_environment(isolation, monkeypatch):
    monkeypatch.setenv("JZ3_FAKE_API_KEY", "sk-secret-0123456789")
    code = ("import os\nprint(sorted(os.environ))\nprint(os.environ.get('JZ3_FAKE_API_KEY'), os.getuid() != 0)\n"
            "import fractions\nprint(fractions.Fraction(1, 3) + fractions.Fraction(1, 6))\n")
    result = run_python(code, isolation=isolation)
    assert result.status == "ok", result
    assert "sk-secret" not in result.stdout and "JZ3_FAKE_API_KEY" not in result.stdout
    assert result.stdout.splitlines()[1:] == ["None True", "1/2"]  # never root, even when the evaluator is
    assert result.isolation == isolation


@needs_namespaces
def test_the_evaluator_environment_cannot_be_read_through_proc(monkeypatch):
    monkeypatch.setenv("JZ3_FAKE_API_KEY", "sk-secret-0123456789")
    code = ("import os\nfound = []\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n        found.append(open(f'/proc/{pid}/environ', 'rb').read())\n    except OSError:\n        pass\n"
            "print(any(b'sk-secret' in e for e in found), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n")
    result = run_python(code, isolation="namespaces")
    assert result.status == "ok", result
    assert result.stdout.startswith("False [1, 2]"), result.stdout  # only PID 1 and the program are visible


@pytest.mark.parametrize("isolation", BOTH)
def test_infinite_loop_times_out(isolation):
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=1.0, isolation=isolation)
    assert result.status == "timeout", result
    assert time.monotonic() - start < 4.0
    _still_works(isolation)


@needs_namespaces
def test_fork_bomb_is_held_to_the_process_limit_and_killed():
    code = WHO + ("import time\ncount = 0\nwhile True:\n    try:\n        os.fork()\n        count += 1\n"
                  "    except OSError:\n        time.sleep(0.01)\n")
    start = time.monotonic()
    result = run_python(code, timeout_s=2.0, max_processes=16, isolation="namespaces")
    assert result.status in ("timeout", "error", "killed"), result
    assert time.monotonic() - start < 6.0
    assert _left_behind(result.stdout) == []
    _still_works("namespaces")


@pytest.mark.parametrize("isolation", BOTH)
def test_ten_gigabyte_allocation_hits_the_memory_limit(isolation):
    result = run_python("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n", memory_mb=512, isolation=isolation)
    assert result.status == "memory", result
    assert "allocated" not in result.stdout and result.stderr.rstrip().endswith("MemoryError")
    assert 'File "' in result.stderr and "<string>" not in result.stderr  # the program's traceback only
    _still_works(isolation)


def test_the_status_comes_from_how_the_process_ended_not_from_its_output(host_temp_unchanged):
    fake = run_python("import sys\nsys.stderr.write('MemoryError\\nCannot allocate memory\\n')\nprint('done')\n")
    assert fake.status == "ok" and fake.stdout.strip() == "done" and fake.exit_code == 0, fake
    other = run_python("raise RuntimeError('MemoryError: Cannot allocate memory')\n")
    assert other.status == "error" and other.exit_code == 1, other
    assert run_python("import sys\nsys.exit(3)\n").status == "error"


@needs_namespaces
def test_writing_outside_its_directory_never_reaches_the_host(tmp_path, repo_root):
    private = ["/tmp/jz3_escape_probe.txt", "/dev/shm/jz3_escape_probe.txt", "~/jz3_escape_probe.txt"]
    refused = [str(tmp_path / "outside.txt"), str(repo_root / "jz3_escape_probe.txt"), "/usr/jz3_escape_probe.txt",
               "/etc/jz3_escape_probe.txt", os.path.join(sys.prefix, "jz3_escape_probe.txt"), "/jz3_escape_probe.txt"]
    lines = ["import os", "wrote = []"]
    for t in private + refused:
        lines += [f"try:\n    open(os.path.expanduser({t!r}), 'w').write('x')\n    wrote.append({t!r})\n"
                  "except OSError:\n    pass"]
    lines += ["open('inside.txt', 'w').write('fine')", "print(wrote)"]
    box = tmp_path / "box"
    box.mkdir()
    result = run_python("\n".join(lines), workdir=box, isolation="namespaces")
    assert result.status == "ok", result
    assert result.stdout.strip() == repr(private), result  # its own /tmp, /dev/shm and home only
    for t in private + refused:
        assert not os.path.exists(os.path.expanduser(t)), t
    assert (box / "inside.txt").read_text() == "fine"  # a `workdir` is bound in, writable


@needs_namespaces
def test_the_host_file_system_is_out_of_sight(repo_root, host_temp_unchanged):
    tag = uuid.uuid4().hex[:8]
    markers = [f"/dev/shm/jz3_probe_{tag}", os.path.join(tempfile.gettempdir(), f"jz3_probe_{tag}"),
               f"/run/jz3_probe_{tag}"]
    for m in markers:
        Path(m).write_text("host")
    paths = markers + ["/var", "/home", "/run", "/root/.bashrc", "/sys", "/etc/shadow", "/etc/hostname",
                       str(repo_root / "pyproject.toml"), str(repo_root / "jz3_jax"), "/proc/1/root/etc"]
    code = (f"import os\npaths = {paths!r}\nprint([p for p in paths if os.path.lexists(p)])\n"
            "import json\nprint(json.dumps([os.listdir('/'), os.listdir('/etc'), os.listdir('/dev')]))\n"
            "print(os.getcwd(), os.listdir('.'), os.listdir('/tmp'), os.listdir('/dev/shm'))\n"
            "import numpy, sympy\nprint(numpy.arange(4).sum(), sympy.Rational(1, 3) + sympy.Rational(1, 6))\n")
    try:
        result = run_python(code, isolation="namespaces")
    finally:
        for m in markers:
            os.unlink(m)
    assert result.status == "ok", result
    visible, listings, here, imports = result.stdout.splitlines()
    assert visible == "[]", visible
    top, etc, dev = json.loads(listings)
    allowed_top = {"bin", "dev", "etc", "lib", "lib64", "proc", "program.py", "sandbox", "sbin", "tmp", "usr"}
    allowed_top |= {Path(t).parts[1] for _, t in sandbox.interpreter_binds(sys.executable)}
    assert set(top) <= allowed_top, top
    assert set(etc) <= {"group", "ld.so.cache", "localtime", "passwd"}, etc
    assert set(dev) == {"fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"}
    in_tmp = sorted({Path(t).parts[2] for _, t in sandbox.interpreter_binds(sys.executable)
                     if Path(t).parts[1] == "tmp"})  # an interpreter that lives under /tmp (a CI clone)
    assert here == f"/sandbox [] {in_tmp} []" and imports == "6 1/2"


@needs_namespaces
def test_host_unix_sockets_are_out_of_reach(host_temp_unchanged):
    tag = uuid.uuid4().hex[:8]
    servers = [Listener(socket.AF_UNIX, socket.SOCK_STREAM, f"/dev/shm/jz3_probe_{tag}.sock"),
               Listener(socket.AF_UNIX, socket.SOCK_STREAM, f"/run/jz3_probe_{tag}.sock"),
               Listener(socket.AF_UNIX, socket.SOCK_DGRAM, f"/dev/shm/jz3_probe_{tag}.dgram"),
               Listener(socket.AF_UNIX, socket.SOCK_STREAM, f"\0jz3_probe_{tag}")]
    code = WHO + ("import socket\nfor kind, path in {targets!r}:\n    s = socket.socket(socket.AF_UNIX, kind)\n"
                  "    try:\n        s.connect(path)\n        s.sendall(b'leak')\n"
                  "        print('reached', repr(path))\n"
                  "    except OSError as e:\n        print(type(e).__name__)\n")
    targets = [(int(s.sock.type), s.address) for s in servers]
    try:
        result = run_python(code.format(targets=targets), isolation="namespaces")
        assert result.status == "ok", result
        assert "reached" not in result.stdout, result.stdout
        assert result.stdout.splitlines()[1:] == ["FileNotFoundError"] * 3 + ["ConnectionRefusedError"]
        assert [s.received() for s in servers] == [False] * 4
        assert _left_behind(result.stdout) == []
    finally:
        for s in servers:
            s.close()


# x86_64 machine code run through ctypes: i386 socket(AF_INET, SOCK_STREAM) through `int 0x80`,
# then connect() to 127.0.0.1:PORT and write "leak" (all i386 syscalls), returning the fd.
INT80_SOCKET = WHO + """\
import ctypes, mmap, socket, struct
buf = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | 0x40, prot=7)  # MAP_32BIT: i386 calls take 32-bit pointers
base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
buf[0x100:0x110] = struct.pack("<HH4s8x", socket.AF_INET, socket.htons(PORT), socket.inet_aton("127.0.0.1"))
buf[0x200:0x204] = b"leak"
i32 = lambda v: struct.pack("<I", v)
code = (b"\\x53" + b"\\xb8" + i32(359) + b"\\xbb" + i32(2) + b"\\xb9" + i32(1) + b"\\x31\\xd2\\xcd\\x80"
        + b"\\x89\\xc3" + b"\\xb8" + i32(362) + b"\\xb9" + i32(base + 0x100) + b"\\xba" + i32(16) + b"\\xcd\\x80"
        + b"\\xb8" + i32(4) + b"\\xb9" + i32(base + 0x200) + b"\\xba" + i32(4) + b"\\xcd\\x80"
        + b"\\x89\\xd8\\x5b\\xc3")
buf[0:len(code)] = code
print("calling", flush=True)
print("returned", ctypes.CFUNCTYPE(ctypes.c_int)(base)(), flush=True)
"""


def _int80_works_here() -> bool:
    """Whether this kernel runs i386 syscalls from 64-bit code at all (IA32 emulation)."""
    code = INT80_SOCKET.replace("PORT", "9")  # nothing listens on port 9: the connect just fails
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and "returned" in done.stdout


@x86_64
@pytest.mark.parametrize("isolation", BOTH)
def test_an_i386_socket_through_int_0x80_kills_the_program(isolation, host_temp_unchanged):
    if not _int80_works_here():
        pytest.skip("no IA32 emulation in this kernel")
    server = Listener()
    try:
        result = run_python(INT80_SOCKET.replace("PORT", str(server.address)), isolation=isolation)
        assert result.status == "killed" and result.signal == "SIGSYS", result
        assert "calling" in result.stdout and "returned" not in result.stdout
        assert not server.received()
        assert _left_behind(result.stdout) == []
    finally:
        server.close()
    _still_works(isolation)


# io_uring: IORING_OP_SOCKET makes an AF_INET socket without the socket() syscall; connect and send.
IO_URING_SOCKET = WHO + """\
import ctypes, mmap, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
ring_fd = libc.syscall(425, 4, params)
if ring_fd < 0:
    print("io_uring_setup", ctypes.get_errno())
    raise SystemExit(0)
sq_entries, cq_entries = struct.unpack_from("II", params, 0)
sq_head, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("7I", params, 40)
cqes = struct.unpack_from("6I", params, 80)[5]
size = max(sq_array + 4 * sq_entries, cqes + 16 * cq_entries)
ring = mmap.mmap(ring_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
sqes = mmap.mmap(ring_fd, 64 * sq_entries, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0x10000000)
sqes[0:64] = struct.pack("<BBHiQQII", 45, 0, 0, socket.AF_INET, socket.SOCK_STREAM, 0, 0, 0).ljust(64, b"\\0")
struct.pack_into("I", ring, sq_array, 0)
struct.pack_into("I", ring, sq_tail, 1)
libc.syscall(426, ring_fd, 1, 1, 1, None, 0)
fd = struct.unpack_from("Qi", ring, cqes)[1]
print("socket", fd, flush=True)
s = socket.socket(fileno=fd)
s.settimeout(2)
s.connect(("127.0.0.1", PORT))
s.sendall(b"leak")
print("sent")
"""


@pytest.mark.parametrize("isolation", BOTH)
def test_an_inet_socket_through_io_uring_is_refused(isolation, host_temp_unchanged):
    server = Listener()
    try:
        result = run_python(IO_URING_SOCKET.replace("PORT", str(server.address)), isolation=isolation)
        assert result.status == "ok", result
        assert result.stdout.splitlines()[1:] == ["io_uring_setup 1"], result.stdout  # EPERM
        assert not server.received()
        assert _left_behind(result.stdout) == []
    finally:
        server.close()


SIGNAL_PID_1 = WHO + """\
import signal, time
refused = 0
for sig in range(1, signal.SIGRTMAX + 1):
    try:
        os.kill(1, sig)
    except OSError:
        refused += 1
time.sleep(0.3)
print(f"still running, {refused} refused")
"""


@needs_namespaces
def test_signals_to_pid_1_change_nothing(host_temp_unchanged):
    result = run_python(SIGNAL_PID_1, isolation="namespaces")
    assert result.status == "ok", result
    # as root the program (uid 65534) may not signal PID 1 at all: every kill() is refused
    expected = f"still running, {signal.SIGRTMAX if os.geteuid() == 0 else 0} refused"
    assert result.stdout.splitlines()[1:] == [expected], result
    assert _left_behind(result.stdout) == []
    _still_works("namespaces")


_AS_NOBODY = """\
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sandbox_copy", sys.argv[1])
sandbox = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sandbox)
r = sandbox.run_python(sys.stdin.read(), isolation="namespaces")
print(json.dumps([r.status, r.stdout, r.stderr]))
"""


@needs_namespaces
@pytest.mark.skipif(os.geteuid() != 0 or _rlimits_python() is None, reason="needs root and a system python")
def test_signals_to_pid_1_change_nothing_under_a_non_root_evaluator(sandbox_copy, host_temp_unchanged):
    """Under a non-root evaluator the program is uid 0 of its namespace, like PID 1, so kill(1, sig)
    passes the permission check and only PID 1's default signal actions keep it running."""
    done = subprocess.run([_rlimits_python(), "-I", "-c", _AS_NOBODY, sandbox_copy], input=SIGNAL_PID_1,
                          capture_output=True, text=True, timeout=60, user=sandbox.SANDBOX_UID,
                          group=sandbox.SANDBOX_UID, extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    status, stdout, stderr = json.loads(done.stdout)
    assert status == "ok" and stdout.splitlines()[1:] == ["still running, 0 refused"], (status, stdout, stderr)
    assert _left_behind(stdout) == []


@needs_namespaces
def test_killing_its_parent_fails_and_the_evaluator_goes_on():
    code = ("import os, signal, time\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\n"
            "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\ntime.sleep(30)\n")
    start = time.monotonic()
    result = run_python(code, timeout_s=2.0, isolation="namespaces")
    assert result.status in ("killed", "timeout"), result  # kill(-1) ends the program itself
    assert time.monotonic() - start < 6.0
    _still_works("namespaces")


@needs_namespaces
def test_a_double_forked_child_does_not_outlive_the_call(tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    code = WHO + ("import time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                  "        time.sleep(1.0)\n        open('late.txt', 'w').write('survived')\n        os._exit(0)\n"
                  "    os._exit(0)\nos.wait()\nprint('parent done')\n")
    result = run_python(code, workdir=box, isolation="namespaces")
    assert result.status == "ok" and "parent done" in result.stdout, result
    assert _left_behind(result.stdout) == []
    time.sleep(1.5)
    assert not (box / "late.txt").exists()


DEEP_TREE = WHO + """\
for depth in range(3000):
    os.mkdir("d")
    os.chdir("d")
open("leaf.txt", "w").write("deep")
print("depth", depth + 1)
"""


@pytest.mark.parametrize("isolation", BOTH)
def test_a_3000_deep_directory_tree_leaves_nothing_behind(isolation, host_temp_unchanged):
    result = run_python(DEEP_TREE, isolation=isolation, timeout_s=20.0)  # no RecursionError here
    assert result.status == "ok" and result.stdout.splitlines()[1:] == ["depth 3000"], result
    assert _left_behind(result.stdout) == []
    _still_works(isolation)


REMOVE_TREE = """\
import importlib.util, os, sys, tempfile
spec = importlib.util.spec_from_file_location("sandbox_copy", sys.argv[1])
sandbox = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sandbox)
outside = tempfile.mkdtemp(prefix="jz3_probe_outside_")
open(os.path.join(outside, "keep.txt"), "w").write("keep")
top = tempfile.mkdtemp(prefix="jz3_probe_tree_")
here = os.open(top, os.O_RDONLY)
for _ in range(3000):
    os.mkdir("d", dir_fd=here)
    inner = os.open("d", os.O_RDONLY, dir_fd=here)
    os.close(here)
    here = inner
os.symlink(outside, "link", dir_fd=here)
os.mkdir("locked", dir_fd=here)
os.mkdir("locked/x", dir_fd=here)
os.chmod("locked/x", 0, dir_fd=here)
os.chmod("locked", 0, dir_fd=here)
os.close(here)
sandbox.remove_tree(top)
print(os.path.exists(top), open(os.path.join(outside, "keep.txt")).read(), oct(os.stat(outside).st_mode & 0o777))
sandbox.remove_tree(outside)
"""


def test_remove_tree_handles_any_depth_and_never_follows_symlinks(sandbox_copy, host_temp_unchanged):
    """3,000 levels (shutil.rmtree raises RecursionError), a symlink out (not followed, its target
    unchanged), directories made unreadable (removed anyway). As root, also as uid 65534, for
    whom the unreadable ones need their mode changed first."""
    runs = [(sys.executable, {})]
    if os.geteuid() == 0 and _rlimits_python():
        runs.append((_rlimits_python(), {"user": sandbox.SANDBOX_UID, "group": sandbox.SANDBOX_UID,
                                         "extra_groups": []}))
    for python, user in runs:
        done = subprocess.run([python, "-I", "-c", REMOVE_TREE, sandbox_copy], capture_output=True, text=True,
                              timeout=60, cwd="/", **user)
        assert done.returncode == 0 and done.stdout.split()[:2] == ["False", "keep"], done.stderr
        assert done.stdout.split()[2] in ("0o700", "0o755"), done.stdout


@pytest.mark.parametrize("isolation", BOTH)
def test_memfd_pages_beyond_the_memory_limit_are_refused(isolation, host_temp_unchanged):
    code = WHO + ("written = 0\ntry:\n    fd = os.memfd_create('hoard')\n"
                  "    for _ in range(450):\n        written += os.write(fd, b'x' * (1 << 20))\n"
                  "except OSError as e:\n    print(type(e).__name__, written >> 20)\n")
    result = run_python(code, memory_mb=256, isolation=isolation)
    assert result.status == "ok" and result.stdout.splitlines()[1:] == ["PermissionError 0"], result
    assert _left_behind(result.stdout) == []


@needs_namespaces
def test_its_tmpfs_is_size_limited(host_temp_unchanged):
    code = WHO + ("chunk, written = b'x' * (1 << 20), {}\n"
                  "for path in ('big.bin', '/tmp/big.bin', '/dev/shm/big.bin'):\n"
                  "    written[path] = 0\n    try:\n        with open(path, 'wb') as f:\n"
                  "            for _ in range(2048):\n                written[path] += f.write(chunk)\n"
                  "    except OSError as e:\n        print(path, e.strerror)\n        os.unlink(path)\n"
                  "print(max(written.values()) >> 20)\n")
    start = time.monotonic()
    result = run_python(code, max_file_mb=4096, memory_mb=256, tmpfs_mb=32, isolation="namespaces")
    assert result.status == "ok", result
    lines = result.stdout.splitlines()[1:]
    assert lines[:3] == [f"{p} No space left on device" for p in ("big.bin", "/tmp/big.bin", "/dev/shm/big.bin")]
    assert int(lines[3]) <= 32  # of the 2 GiB asked for
    assert time.monotonic() - start < 15.0
    assert _left_behind(result.stdout) == []


@pytest.mark.parametrize("isolation", BOTH)
def test_a_five_gigabyte_file_stops_at_the_file_size_limit(tmp_path, isolation):
    box = Path(tempfile.mkdtemp(prefix="jz3_test_box_"))  # a directory the program's user can reach
    try:
        code = ("chunk = b'x' * (1 << 20)\nwith open('big.bin', 'wb') as f:\n    for _ in range(5 * 1024):\n"
                "        f.write(chunk)\nprint('wrote 5 GB')\n")
        result = run_python(code, max_file_mb=8, workdir=box, isolation=isolation)
        assert result.status == "error", result
        assert "wrote 5 GB" not in result.stdout and "File too large" in result.stderr
        assert (box / "big.bin").stat().st_size <= 8 << 20
    finally:
        shutil.rmtree(box)


@pytest.mark.parametrize("isolation", BOTH)
def test_tcp_connection_to_a_local_server_is_refused(isolation):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3.0)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')\nprint('connected')\n"
    result = run_python(code, isolation=isolation)
    thread.join()
    server.close()
    assert result.status == "error", result
    assert "connected" not in result.stdout and not accepted
    assert "Error" in result.stderr  # PermissionError (seccomp)


SYSCALLS = """\
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
calls = {NUMBERS}
results = {}
for name, (nr, *args) in calls.items():
    ret = libc.syscall(nr, *args)
    results[name] = errno.errorcode.get(ctypes.get_errno(), "?") if ret < 0 else "allowed"
for family in (socket.AF_NETLINK, socket.AF_PACKET, socket.AF_INET6):
    try:
        socket.socket(family, socket.SOCK_DGRAM).close()
        results[family.name] = "allowed"
    except PermissionError:
        results[family.name] = "EACCES"
a, b = socket.socketpair()
print(sorted(results.items()), a.send(b"x"))
"""


@x86_64
@pytest.mark.parametrize("isolation", BOTH)
def test_seccomp_refuses_the_escape_hatches(isolation):
    numbers = {"ptrace": (101, 0, 0, 0, 0), "unshare_user": (272, 0x10000000), "keyctl": (250, 0),
               "bpf": (321, 0, 0, 0), "userfaultfd": (323, 0), "perf_event_open": (298, 0, 0, -1, -1, 0),
               "shmget": (29, 0, 4096, 0o1600), "process_vm_readv": (310, 1, 0, 0, 0, 0, 0),
               "mount": (165, 0, 0, 0, 0, 0), "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0),
               "x32_getpid": (0x40000000 + 39,)}
    code = SYSCALLS.replace("{NUMBERS}", repr({k: v for k, v in numbers.items() if k != "x32_getpid"}))
    result = run_python(code, isolation=isolation)
    assert result.status == "ok", result
    expected = {name: "EPERM" for name in numbers if name != "x32_getpid"}
    expected |= {"AF_NETLINK": "EACCES", "AF_PACKET": "EACCES", "AF_INET6": "EACCES"}
    assert result.stdout.strip() == f"{sorted(expected.items())} 1"
    x32 = run_python(SYSCALLS.replace("{NUMBERS}", repr({"x32_getpid": numbers["x32_getpid"]})), isolation=isolation)
    assert x32.status == "killed" and x32.signal == "SIGSYS", x32


def test_output_is_truncated():
    result = run_python("print('y' * 100000)", max_output_chars=1000)
    assert result.status == "ok"
    assert result.stdout.startswith("y" * 1000) and len(result.stdout) < 1100 and "truncated" in result.stdout


def test_error_exit_and_signal_statuses():
    assert run_python("raise ValueError('bad')").status == "error"
    killed = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert killed.status == "killed" and killed.signal == "SIGSEGV"


def test_pool_runs_sandboxes_in_parallel():
    with SandboxPool(workers=4, timeout_s=5.0) as pool:
        start = time.monotonic()
        results = pool.map([f"import time\ntime.sleep(1.0)\nprint({i})" for i in range(4)])
        elapsed = time.monotonic() - start
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]
    assert elapsed < 3.5  # four 1 s sleeps, not one after another


@needs_namespaces
def test_seccomp_refuses_inet_sockets_but_not_unix_ones():
    code = ("import socket\na, b = socket.socketpair()\na.sendall(b'ok')\nprint(b.recv(2).decode())\n"
            "try:\n    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\nexcept PermissionError:\n    print('refused')\n")
    result = run_python(code, isolation="namespaces")
    assert result.status == "ok" and result.stdout.split() == ["ok", "refused"], result


def test_the_unsandboxed_fallback_runs_only_when_allowed(monkeypatch, caplog):
    with pytest.raises(sandbox.SandboxError, match="eval.allow_unsandboxed=true"):
        sandbox.run_python("print(1)", isolation="rlimits")
    with pytest.raises(sandbox.SandboxError, match="eval.allow_unsandboxed=true"):
        SandboxPool(workers=1, isolation="rlimits")
    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)  # "auto" on a kernel without them
    with pytest.raises(sandbox.SandboxError, match="eval.allow_unsandboxed=true"):
        sandbox.run_python("print(1)")
    sandbox._warn_unsandboxed.cache_clear()
    with caplog.at_level("WARNING", logger=sandbox.__name__):
        assert sandbox.resolve_isolation("auto", allow_unsandboxed=True) == "rlimits"
    assert "NOT a sandbox" in caplog.text


def test_the_seccomp_filter_exists_for_every_machine_the_sandbox_runs_on():
    from jz3_jax.eval import _seccomp

    assert set(sandbox.SECCOMP_MACHINES) == set(_seccomp.AUDIT_ARCH)
    for machine in sandbox.SECCOMP_MACHINES:
        code = _seccomp.build(machine)
        assert len(code) % 8 == 0 and code[:8] == bytes([0x20, 0, 0, 0, 4, 0, 0, 0])  # first: load `arch`


@pytest.mark.skipif(os.geteuid() != 0 or sandbox._world_reachable(sys.executable),
                    reason="only as root with an interpreter others cannot run")
def test_rlimits_fallback_refuses_to_run_programs_as_root():
    with pytest.raises(sandbox.SandboxError, match="rlimits isolation as root"):
        sandbox.run_python("print(1)", isolation="rlimits", allow_unsandboxed=True)
