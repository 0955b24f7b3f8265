"""The `pipeline` stage: corpus -> distill (initial) -> sft -> select -> distill (boost) -> sft (boost)
-> synthesize -> filter -> pretrain -> eval (base and trained) -> report, in one run directory.

Each step runs its registered stage in process, in `RUN_DIR/STEP/`, with the config `steps.configure`
gives it (written to `STEP/config.json`, so `python -m jz3_jax.launch STAGE --config
RUN_DIR/STEP/config.json` reruns it alone) and its own log files. A finished step is skipped, a
changed one is rerun with everything downstream of it (`markers.py`), an interrupted one resumes.
In a multi-process job every process runs every step (the stages are collective); process 0 writes
the markers after all processes finished the step. A failure stops the pipeline naming the step and
its log file. `RUN_DIR/pipeline/status.json` records what each step did and how long it took.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from typing import TYPE_CHECKING

import numpy as np

from jz3_jax.errors import UserError
from jz3_jax.pipeline import markers
from jz3_jax.pipeline.steps import Step, configure, pipeline_steps, prepare, selected_names
from jz3_jax.runtime import peers
from jz3_jax.runtime.paths import as_path, atomic_write, is_local, local_mirror
from jz3_jax.stages import StageContext, get_stage

if TYPE_CHECKING:
    from jz3_jax.config import Config


class PipelineStageError(UserError):
    """A step failed on bad input (exit 2); the message names the step and its log file."""


class PipelineStageFailed(RuntimeError):
    """A step failed (exit 1); the message names the step and its log file."""


def log_file(step_dir, process_index: int) -> str:
    """Where a step's log lines of this process go (a local mirror for gs:// run dirs)."""
    return os.fspath(local_mirror(as_path(step_dir) / "logs") / f"process_{process_index}.log")


@contextlib.contextmanager
def _step_log(logger: logging.Logger, step_dir, process_index: int):
    """Also write the project logger's lines to the step's own log file while it runs."""
    path = log_file(step_dir, process_index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [p{process_index}] %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()


def _use_compilation_cache(cfg: Config, logger: logging.Logger) -> None:
    """The training steps (and select's warm-up) compile the same programs: a persistent XLA cache
    in the run dir compiles each once, and makes a rerun's compiles quick. Unless one is set already."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir or not is_local(cfg.run_dir):
        return
    directory = os.fspath(as_path(cfg.run_dir) / "xla_cache")
    jax.config.update("jax_compilation_cache_dir", directory)
    logger.info("pipeline: persistent XLA compilation cache in %s", directory)


def plan(cfg: Config) -> tuple[list[tuple[Step, Config, str]], list[str]]:
    """Every step of this pipeline with its config and fingerprint, and the names to run now."""
    steps = pipeline_steps(cfg)
    chosen = selected_names(cfg, steps)
    planned, digests = [], {}
    for step in steps:
        step_cfg = configure(step, cfg) if step.name != "report" else cfg
        digests[step.name] = markers.fingerprint(step, cfg, step_cfg, digests)
        planned.append((step, step_cfg, digests[step.name]))
    return planned, chosen


def describe(cfg: Config) -> list[str]:
    """One line per step: what it would do now (run, resume, rerun from scratch, skip, not chosen)."""
    planned, chosen = plan(cfg)
    words = {"done": "done, skipped", "stale": "changed: rerun from scratch", "partial": "interrupted: resumed",
             "new": "run"}
    lines = []
    for step, _, digest in planned:
        state = markers.state(as_path(cfg.run_dir) / step.name, digest)
        what = "not in pipeline.stages" if step.name not in chosen else (
            "rebuilt" if step.name == "report" else words[state])
        lines.append(f"  {step.name:<16} {step.stage:<11} {what}")
    return lines


def run(cfg: Config, ctx: StageContext) -> dict:
    """Run the chosen steps in order; returns {step: "skipped" | "ran"}."""
    run_dir = as_path(cfg.run_dir)
    planned, chosen = plan(cfg)
    by_name = {step.name: (step, step_cfg, digest) for step, step_cfg, digest in planned}
    states = {name: markers.state(run_dir / name, by_name[name][2]) for name in chosen}
    error = None
    try:
        _check_inputs(run_dir, chosen, by_name, ctx.logger)
    except UserError as e:
        error = e
    peers.agree("pipeline planned", error)  # every process has read the markers before any is changed
    _use_compilation_cache(cfg, ctx.logger)
    to_run = [n for n in chosen if states[n] != "done" or n == "report"]
    ctx.logger.info("pipeline: %s", ", ".join(f"{n} ({'run' if n in to_run else 'done'})" for n in chosen))
    status_path = ctx.stage_dir / "status.json"
    status = _read_status(status_path)
    outcome = {}
    with contextlib.ExitStack() as stack:
        teacher = None
        for name in chosen:
            step, step_cfg, digest = by_name[name]
            if name not in to_run:
                ctx.logger.info("pipeline: %s is done (fingerprint %s), skipped", name, digest[:12])
                outcome[name] = "skipped"
                continue
            if step.stage == "distill" and cfg.pipeline.serve_teacher:
                if teacher is None and ctx.process_index == 0:
                    from jz3_jax.pipeline.teacher import LocalTeacher

                    teacher = stack.enter_context(LocalTeacher(cfg, ctx.logger))  # stopped on failure too
                step_cfg = _with_teacher(step_cfg, teacher)
            started = time.perf_counter()
            _run_step(step, step_cfg, digest, states[name], cfg, ctx)
            seconds = round(time.perf_counter() - started, 1)
            outcome[name] = "ran"
            status[name] = {"status": "ran", "seconds": seconds, "fingerprint": digest,
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if ctx.process_index == 0:
                _write_status(status_path, status)
            if teacher is not None and step.stage == "distill":
                teacher.stop()  # the steps in between get its memory and CPU back; the next round restarts it
                teacher = None
    ctx.logger.info("pipeline: done (%s)", ", ".join(f"{k} {v}" for k, v in outcome.items()))
    return outcome


def _with_teacher(step_cfg: Config, teacher) -> Config:
    from jz3_jax.pipeline.teacher import KEY_ENV

    t = step_cfg.teacher
    if teacher is not None:
        t.base_url, t.model = teacher.url, teacher.model
    else:  # another process: distill works in process 0 only, but checks that these are set
        t.base_url, t.model = "http://127.0.0.1/served-by-process-0/v1", "local-teacher"
    t.api_key_env = KEY_ENV
    return step_cfg


def _check_inputs(run_dir, chosen: list[str], by_name: dict, logger: logging.Logger) -> None:
    """A step run without the steps it reads needs their finished artifacts in the run dir; the local
    teacher (`serve`) has no Batch API, so it cannot answer a distill step in batch mode."""
    for name in chosen:
        step, step_cfg, _ = by_name[name]
        if step.stage == "distill" and step_cfg.pipeline.serve_teacher and step_cfg.distill.mode == "batch":
            raise UserError(f"pipeline.serve_teacher=true cannot serve {name} with distill.mode=batch: the local "
                            "teacher (serve) has no /v1/files and /v1/batches endpoints; use distill.mode=sync "
                            f"for {name} or a provider's teacher (pipeline.serve_teacher=false)")
        for dep in by_name[name][0].deps:
            if dep in chosen:
                continue
            done = markers.read(run_dir / dep, markers.DONE)
            if done is None:
                raise UserError(f"pipeline.stages: {name} reads the outputs of {dep}, which has not finished in "
                                f"{run_dir}; add {dep} to pipeline.stages")
            if done.get("fingerprint") != by_name[dep][2]:
                logger.warning("pipeline: %s reads %s, whose outputs were made with another config", name, dep)


def _run_step(step: Step, step_cfg: Config, digest: str, state: str, cfg: Config, ctx: StageContext) -> None:
    from jz3_jax.config import build_spec, save_config
    from jz3_jax.runtime.preemption import Preempted

    step_dir = as_path(cfg.run_dir) / step.name
    if ctx.process_index == 0:
        if state == "stale":
            ctx.logger.info("pipeline: %s was made with another config: cleared, rerun from scratch", step.name)
            if step_dir.exists():
                step_dir.rmtree()
        step_dir.mkdir(parents=True, exist_ok=True)
        markers.write(step_dir, markers.STARTED, digest)
    peers.agree(f"pipeline {step.name} prepared", None)
    with _step_log(ctx.logger, step_dir, ctx.process_index) as log_path:
        ctx.logger.info("pipeline: %s (%s stage%s) in %s", step.name, step.stage,
                        ", resuming" if state == "partial" else "", step_dir)
        error = None
        try:
            if ctx.process_index == 0 and step.name != "report":
                save_config(step_cfg, step_dir / "config.json")
                prepare(step, cfg)
            random.seed(step_cfg.seed)
            np.random.seed(step_cfg.seed % 2**32)
            sub = StageContext(step.stage, step_dir, ctx.logger, ctx.process_index, ctx.process_count,
                               as_path(cfg.run_dir))
            if step.name == "report":
                from jz3_jax.pipeline.report import build_report

                build_report(cfg, sub)
            else:
                stage = get_stage(step.stage)
                stage.load()(build_spec(stage.spec_type(), step_cfg), sub)
        except (Preempted, KeyboardInterrupt):
            raise
        except peers.PeerFailed:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised naming the step
            ctx.logger.exception("pipeline: stage %s failed", step.name)
            error = e
        if error is not None:
            kind = PipelineStageError if isinstance(error, UserError) else PipelineStageFailed
            raise kind(f"pipeline stage {step.name} failed: {type(error).__name__}: {error} (log: {log_path})") \
                from error
        peers.agree(f"pipeline {step.name} finished", None)
    if ctx.process_index == 0:
        markers.write(step_dir, markers.DONE, digest, stage=step.stage)


def _read_status(path) -> dict:
    try:
        return json.loads(as_path(path).read_text()) if as_path(path).exists() else {}
    except (OSError, ValueError):
        return {}


def _write_status(path, status: dict) -> None:
    with atomic_write(path) as f:
        json.dump(status, f, indent=1)
