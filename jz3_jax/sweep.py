"""Sweeps: expand `--sweep key=v1,v2` grids and `--sweep-file` override lists into runs.

Each run gets its own run directory (named from its overrides, under the base run dir) and is
launched as a subprocess with the exact command a dry run prints. `sweep.jsonl` in the base run
dir records every run's overrides, run dir and status; rerunning a sweep skips runs already done.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from jz3_jax.config.overrides import ConfigError, parse_override
from jz3_jax.runtime.paths import as_path


@dataclasses.dataclass
class SweepRun:
    overrides: list[str]  # the run's own `key=value` overrides (sweep part only)
    run_dir: str
    command: list[str]


def parse_grid(specs: list[str]) -> list[list[str]]:
    """`["a=1,2", "b=x"]` -> the product `[["a=1", "b=x"], ["a=2", "b=x"]]`."""
    axes = []
    for spec in specs:
        key, values = parse_override(spec)
        items = [v for v in values.split(",") if v != ""]
        if not items:
            raise ConfigError(f"--sweep {spec!r} lists no values")
        axes.append([f"{key}={v}" for v in items])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def _format_value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_sweep_file(path: str) -> list[list[str]]:
    """A Python file defining `SWEEP`: a list of `{key: value}` dicts, one per run."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"sweep file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_jz3_sweep_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = getattr(module, "SWEEP", None)
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs) or not runs:
        raise ConfigError(f"sweep file {path!r} must define SWEEP, a non-empty list of override dicts")
    return [[f"{k}={_format_value(v)}" for k, v in run.items()] for run in runs]


def run_name(overrides: list[str]) -> str:
    """A directory name made from a run's overrides, safe for shells and file systems."""
    name = "__".join(overrides) or "base"
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", name)[:200]


def expand(grid_specs: list[str], sweep_file: str | None) -> list[list[str]]:
    """Every run's overrides: each sweep-file entry (or one empty entry) times the grid product."""
    file_runs = load_sweep_file(sweep_file) if sweep_file else [[]]
    grid = parse_grid(grid_specs)
    return [f + g for f in file_runs for g in grid]


def plan(stage: str, config_path: str, base_run_dir: str, base_overrides: list[str],
         sweep_overrides: list[list[str]], extra_flags: list[str]) -> list[SweepRun]:
    """One `SweepRun` (with its launch command) per sweep entry."""
    runs = []
    for overrides in sweep_overrides:
        run_dir = str(as_path(base_run_dir) / run_name(overrides))
        command = [sys.executable, "-m", "jz3_jax.launch", stage, "--config", config_path,
                   "--run-dir", run_dir, *extra_flags, *base_overrides, *overrides]
        runs.append(SweepRun(overrides, run_dir, command))
    return runs


def _done_run_dirs(manifest: Path) -> set[str]:
    if not manifest.exists():
        return set()
    done = set()
    for line in manifest.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("status") == "done":
                done.add(record["run_dir"])
    return done


def execute(runs: list[SweepRun], base_run_dir: str, log) -> int:
    """Run each sweep run in sequence (skipping ones already done); return the number that failed."""
    manifest = as_path(base_run_dir) / "sweep.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    done = _done_run_dirs(manifest)
    failed = 0
    for i, run in enumerate(runs, 1):
        if run.run_dir in done:
            log(f"[{i}/{len(runs)}] {run.run_dir}: already done, skipped")
            continue
        log(f"[{i}/{len(runs)}] {shlex.join(run.command)}")
        code = subprocess.call(run.command)
        status = "done" if code == 0 else "failed"
        failed += code != 0
        with manifest.open("a") as f:
            f.write(json.dumps({"overrides": run.overrides, "run_dir": run.run_dir,
                                "status": status, "returncode": code}) + "\n")
    return failed
