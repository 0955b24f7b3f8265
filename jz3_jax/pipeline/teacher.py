"""The local teacher: this project's `serve` stage in a subprocess on 127.0.0.1, for the distill steps.

Started on a free port (`serve.port=0`) with a fresh random API key, ready once it prints its
`serving NAME on URL` line and `/health` answers; stopped with SIGTERM (then SIGKILL) when the
distill steps are done, and also when the pipeline fails or is interrupted.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import TYPE_CHECKING

from jz3_jax.errors import UserError
from jz3_jax.runtime.paths import as_path

if TYPE_CHECKING:
    from jz3_jax.config import Config

KEY_ENV = "JZ3_PIPELINE_TEACHER_KEY"
_READY = re.compile(r"serving (\S+) on (http://\S+)")


# Runs first in the child: ask for SIGTERM when the pipeline process dies (even by SIGKILL; Linux
# prctl PR_SET_PDEATHSIG, kept across exec), then become the launcher. (A `preexec_fn` would do the
# same, but forking a process that runs JAX threads through Python's fork hooks is unsafe.)
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


class TeacherStartError(UserError):
    """The local teacher server did not come up."""


class LocalTeacher:
    """`with LocalTeacher(cfg, logger) as t:` t.url (…/v1), t.model, t.key_env while it runs."""

    def __init__(self, cfg: Config, logger):
        self.cfg, self.logger = cfg, logger
        self.process: subprocess.Popen | None = None
        self.url = self.model = ""
        self.key_env = KEY_ENV
        self.log_path = as_path(cfg.run_dir) / "serve" / "logs" / "process_0.log"

    def command(self, config_file: str) -> list[str]:
        """The launcher command that serves the teacher."""
        p = self.cfg.pipeline
        overrides = [f"model.checkpoint={p.teacher_checkpoint or self.cfg.model.checkpoint}", "serve.host=127.0.0.1",
                     "serve.port=0", f"serve.api_key_env={KEY_ENV}", "distributed.enabled=false",
                     *p.serve_overrides]
        return [sys.executable, "-m", "jz3_jax.launch", "serve", "--config", config_file,
                "--run-dir", os.fspath(self.cfg.run_dir), *overrides]

    def __enter__(self) -> "LocalTeacher":
        from jz3_jax.config import save_config

        config_file = as_path(self.cfg.run_dir) / "serve" / "pipeline_config.json"
        save_config(self.cfg, config_file)
        key = secrets.token_hex(16)
        os.environ[KEY_ENV] = key  # the distill steps read it through teacher.api_key_env
        env = {**os.environ, KEY_ENV: key, "PYTHONUNBUFFERED": "1"}
        import jax

        if jax.config.jax_compilation_cache_dir:  # the pipeline's cache: a restarted server compiles nothing new
            env.setdefault("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
        command = self.command(os.fspath(config_file))
        self.logger.info("pipeline: starting the local teacher: %s", " ".join(command))
        self.process = subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, *command[1:]], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env)
        try:
            self._wait_ready(self.cfg.pipeline.serve_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.logger.info("pipeline: local teacher %s ready at %s", self.model, self.url)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        found: dict[str, str] = {}
        tail: list[str] = []

        def read() -> None:  # keeps draining the pipe afterwards, so the server never blocks on it
            for line in self.process.stdout:
                tail.append(line)
                del tail[:-20]
                match = _READY.search(line)
                if match and not found:
                    found.update(model=match.group(1), url=match.group(2))

        threading.Thread(target=read, name="teacher-output", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found:
            if self.process.poll() is not None:
                raise TeacherStartError(f"the local teacher exited with code {self.process.returncode} before it was "
                                        f"ready (log: {self.log_path}):\n{''.join(tail[-10:])}")
            if time.monotonic() > deadline:
                raise TeacherStartError(f"the local teacher was not ready after {timeout_s:g} s "
                                        f"(pipeline.serve_timeout_s; log: {self.log_path})")
            time.sleep(0.2)
        self.model, self.url = found["model"], found["url"] + "/v1"
        with urllib.request.urlopen(found["url"] + "/health", timeout=30) as response:
            if response.status != 200:
                raise TeacherStartError(f"the local teacher's /health answered {response.status}")

    def stop(self) -> None:
        """SIGTERM (the server drains and exits), SIGKILL after 30 s; idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.logger.info("pipeline: local teacher stopped")

    def __exit__(self, *exc) -> None:
        self.stop()
