"""Fingerprints and completion markers: when a pipeline step is done, and for which config.

A step's fingerprint is the SHA-256 of the fully resolved values (defaults included) of exactly the
config sections its stage's spec declares (`stages/registry.py`: `seed` and the sections), and of
the fingerprints of the steps it reads. Changing a key, on the command line or as a default in the
code, therefore changes the fingerprint of the steps whose stage reads it and of every step
downstream of them, and of no other. The run directory's own path is written as `$RUN_DIR`, so a
moved run dir keeps its markers.

`STEP/pipeline.started.json` is written before a step runs, `STEP/pipeline.done.json` last, after
every process finished it. A step whose done marker holds its fingerprint is skipped; one with a
marker for another fingerprint (either kind) is cleared and rerun from scratch; one started with the
same fingerprint but never finished is rerun in place and resumes (every stage is resumable).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import TYPE_CHECKING

from jz3_jax.runtime.paths import as_path, atomic_write

if TYPE_CHECKING:
    from jz3_jax.config import Config
    from jz3_jax.pipeline.steps import Step

DONE = "pipeline.done.json"
STARTED = "pipeline.started.json"


def fingerprint(step: Step, cfg: Config, step_cfg: Config, upstream: dict[str, str]) -> str:
    """The fingerprint of `step` run with `step_cfg` (see the module docstring)."""
    from jz3_jax.config import resolved_sections
    from jz3_jax.stages import get_stage

    spec_type = get_stage(step.stage).spec_type() if step.stage != "report" else None
    picked = resolved_sections(spec_type, step_cfg) if spec_type else {}
    if step.stage == "distill" and cfg.pipeline.serve_teacher:  # the served teacher replaces teacher.*
        p = cfg.pipeline
        picked["served_teacher"] = [p.teacher_checkpoint or cfg.model.checkpoint, list(p.serve_overrides)]
    if step.name == "pretrain":
        picked["pretrain_mix"] = cfg.pipeline.pretrain_mix
    text = json.dumps({"step": step.name, "config": picked, "inputs": {d: upstream[d] for d in step.deps}},
                      sort_keys=True)
    text = text.replace(json.dumps(os.fspath(as_path(cfg.run_dir)))[1:-1], "$RUN_DIR")
    return hashlib.sha256(text.encode()).hexdigest()


def read(step_dir, name: str) -> dict | None:
    """The marker `name` (DONE or STARTED) of a step directory, or None."""
    path = as_path(step_dir) / name
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None  # a torn marker counts as absent


def write(step_dir, name: str, digest: str, **extra) -> None:
    """Write a marker atomically."""
    with atomic_write(as_path(step_dir) / name) as f:
        json.dump({"fingerprint": digest, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}, f, indent=1)


def state(step_dir, digest: str) -> str:
    """"done" (skip), "stale" (clear, then run), "partial" (resume) or "new" (run)."""
    done, started = read(step_dir, DONE), read(step_dir, STARTED)
    if done is not None and done.get("fingerprint") == digest:
        return "done"
    if done is not None or (started is not None and started.get("fingerprint") != digest):
        return "stale"
    return "partial" if started is not None else "new"
