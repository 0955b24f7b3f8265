"""The sandbox stops each hostile program within its limits, reports a failed run, and the caller goes on."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from jz3_jax.eval import sandbox
from jz3_jax.eval.sandbox import SandboxPool

needs_namespaces = pytest.mark.skipif(not sandbox.namespaces_available(),
                                      reason="unprivileged user namespaces are not available here")

def _rlimits_python() -> str | None:
    """An interpreter the rlimits fallback may use: it refuses to run as root when uid 65534 cannot
    start the interpreter, so as root with a private venv the tests use the system python."""
    if os.geteuid() != 0 or sandbox._world_reachable(sys.executable):
        return sys.executable
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") and sandbox._world_reachable("/usr/bin/python3") \
        else None


BOTH = ["namespaces", pytest.param("rlimits", marks=pytest.mark.skipif(
    _rlimits_python() is None, reason="rlimits fallback as root needs an interpreter uid 65534 can run"))]


def run_python(code: str, **kw):
    """`sandbox.run_python`, with the rlimits fallback on an interpreter it accepts."""
    if kw.get("isolation") == "rlimits":
        kw.setdefault("python", _rlimits_python())
    return sandbox.run_python(code, **kw)


def _processes_with_env(entry: str) -> list[int]:
    """Host pids whose environment holds `entry` (e.g. the unique HOME of one sandbox)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if entry.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


_CLEANUP: list[Path] = []


def request_cleanup(path: Path) -> None:
    _CLEANUP.append(path)


@pytest.fixture(autouse=True)
def _remove_boxes():
    yield
    while _CLEANUP:
        shutil.rmtree(_CLEANUP.pop(), ignore_errors=True)


def _still_works(isolation: str) -> None:
    result = run_python("print(6 * 7)", isolation=isolation)
    assert result.status == "ok" and result.stdout.strip() == "42", result


@pytest.mark.parametrize("isolation", BOTH)
def test_a_plain_program_runs_with_an_empty_environment(isolation, monkeypatch):
    if isolation == "namespaces" and not sandbox.namespaces_available():
        pytest.skip("no user namespaces")
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
    if isolation == "namespaces" and not sandbox.namespaces_available():
        pytest.skip("no user namespaces")
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=1.0, isolation=isolation)
    assert result.status == "timeout", result
    assert time.monotonic() - start < 4.0
    _still_works(isolation)


@needs_namespaces
def test_fork_bomb_is_held_to_the_process_limit_and_killed(tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    code = ("import os, time\ncount = 0\nwhile True:\n    try:\n        os.fork()\n        count += 1\n"
            "    except OSError:\n        time.sleep(0.01)\n")
    start = time.monotonic()
    result = run_python(code, timeout_s=2.0, max_processes=16, workdir=box, isolation="namespaces")
    assert result.status in ("timeout", "error", "killed"), result
    assert result.status != "ok"
    assert time.monotonic() - start < 6.0
    assert _processes_with_env(f"HOME={box.resolve()}") == []
    _still_works("namespaces")


@pytest.mark.parametrize("isolation", BOTH)
def test_ten_gigabyte_allocation_hits_the_memory_limit(isolation):
    if isolation == "namespaces" and not sandbox.namespaces_available():
        pytest.skip("no user namespaces")
    result = run_python("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n", memory_mb=512, isolation=isolation)
    assert result.status == "memory", result
    assert "allocated" not in result.stdout
    _still_works(isolation)


@needs_namespaces
def test_writing_outside_its_directory_fails(tmp_path, repo_root):
    targets = [tmp_path / "outside.txt", repo_root / "jz3_escape_probe.txt", "/tmp/jz3_escape_probe.txt",
               os.path.expanduser("~/jz3_escape_probe.txt"), "/dev/shm/jz3_escape_probe.txt"]
    lines = ["import sys", "wrote = []"]
    for t in targets:
        lines += [f"try:\n    open({str(t)!r}, 'w').write('x')\n    wrote.append({str(t)!r})\nexcept OSError:\n    pass"]
    lines += ["open('inside.txt', 'w').write('fine')", "print(wrote)", "sys.exit(1 if not wrote else 0)"]
    box = tmp_path / "box"
    box.mkdir()
    result = run_python("\n".join(lines), workdir=box, isolation="namespaces")
    assert result.stdout.strip() == "[]", result
    assert result.status == "error"
    for t in targets:
        assert not os.path.exists(t), t
    assert (box / "inside.txt").read_text() == "fine"  # its own directory is writable


@pytest.mark.parametrize("isolation", BOTH)
def test_tcp_connection_to_a_local_server_is_refused(isolation):
    if isolation == "namespaces" and not sandbox.namespaces_available():
        pytest.skip("no user namespaces")
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
    assert "Error" in result.stderr  # PermissionError (seccomp) or OSError: network unreachable


@needs_namespaces
def test_killing_its_parent_fails_and_the_evaluator_goes_on():
    code = ("import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\n"
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
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(1.0)\n        open('late.txt', 'w').write('survived')\n        os._exit(0)\n"
            "    os._exit(0)\nos.wait()\nprint('parent done')\n")
    result = run_python(code, workdir=box, isolation="namespaces")
    assert result.status == "ok" and "parent done" in result.stdout, result
    assert _processes_with_env(f"HOME={box.resolve()}") == []
    time.sleep(2.0)
    assert not (box / "late.txt").exists()


@pytest.mark.parametrize("isolation", BOTH)
def test_a_five_gigabyte_file_stops_at_the_file_size_limit(tmp_path, isolation):
    if isolation == "namespaces" and not sandbox.namespaces_available():
        pytest.skip("no user namespaces")
    box = Path(tempfile.mkdtemp(prefix="jz3_test_box_"))  # a directory the program's user can reach
    request_cleanup(box)
    code = ("chunk = b'x' * (1 << 20)\nwith open('big.bin', 'wb') as f:\n    for _ in range(5 * 1024):\n"
            "        f.write(chunk)\nprint('wrote 5 GB')\n")
    result = run_python(code, max_file_mb=8, workdir=box, isolation=isolation)
    assert result.status == "error", result
    assert "wrote 5 GB" not in result.stdout and "File too large" in result.stderr
    assert (box / "big.bin").stat().st_size <= 8 << 20


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


@pytest.mark.skipif(os.geteuid() != 0 or sandbox._world_reachable(sys.executable),
                    reason="only as root with an interpreter others cannot run")
def test_rlimits_fallback_refuses_to_run_programs_as_root():
    with pytest.raises(sandbox.SandboxError, match="rlimits isolation as root"):
        sandbox.run_python("print(1)", isolation="rlimits")


@needs_namespaces
def test_the_venv_packages_are_importable_in_the_sandbox():
    result = run_python("import sympy\nprint(sympy.Rational(1, 3) + sympy.Rational(1, 6))\n", isolation="namespaces")
    assert result.status == "ok" and result.stdout.strip() == "1/2", result
