"""The `pipeline` section (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses

# The pipeline's steps in order. Each runs one stage in its own directory RUN_DIR/STEP/.
STEPS = ["corpus", "distill_initial", "sft_initial", "select", "distill_boost", "sft_boost", "synthesize", "filter",
         "pretrain", "eval_base", "eval", "report"]


def _empty() -> list[str]:
    return []


@dataclasses.dataclass
class PipelineConfig:
    """`pipeline` stage: the whole recipe in one run directory, each step reading the one before.

    `stages`: the steps to run, in pipeline order (empty = all; `distill` / `sft` name both
    rounds). `boost`: the second round (select, distill_boost, sft_boost); off, the initial
    synthesizer writes the corpus. `synthesizer`: the synthesizer's base checkpoint ("" =
    `model.checkpoint`; the final model is always `model.checkpoint`). `serve_teacher`: start this
    project's `serve` on 127.0.0.1 as the teacher (a subprocess on a free port, stopped when the
    distill step is done, also on failure), hosting `teacher_checkpoint` ("" = `model.checkpoint`)
    with `serve_overrides` (`key=value`, e.g. engine sizes); it replaces `teacher.base_url`,
    `teacher.model` and `teacher.api_key_env`. `serve_timeout_s`: how long the server may take to
    start. `pretrain_mix`: a jsonl of `input`/`output` records appended to the synthetic corpus for
    `pretrain` (the paper appends its SFT mix; "" = none). Per-step overrides (`key=value` each),
    applied after the pipeline's own settings: `corpus`, `distill_initial`, ..., `eval` (e.g.
    `pipeline.pretrain=train.steps=40`).
    """

    stages: list[str] = dataclasses.field(default_factory=_empty)
    boost: bool = True
    synthesizer: str = ""
    serve_teacher: bool = False
    teacher_checkpoint: str = ""
    serve_overrides: list[str] = dataclasses.field(default_factory=_empty)
    serve_timeout_s: float = 600.0
    pretrain_mix: str = ""
    corpus: list[str] = dataclasses.field(default_factory=_empty)
    distill_initial: list[str] = dataclasses.field(default_factory=_empty)
    sft_initial: list[str] = dataclasses.field(default_factory=_empty)
    select: list[str] = dataclasses.field(default_factory=_empty)
    distill_boost: list[str] = dataclasses.field(default_factory=_empty)
    sft_boost: list[str] = dataclasses.field(default_factory=_empty)
    synthesize: list[str] = dataclasses.field(default_factory=_empty)
    filter: list[str] = dataclasses.field(default_factory=_empty)
    pretrain: list[str] = dataclasses.field(default_factory=_empty)
    eval_base: list[str] = dataclasses.field(default_factory=_empty)
    eval: list[str] = dataclasses.field(default_factory=_empty)
