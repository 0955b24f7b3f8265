"""Stage names, one-line descriptions and the function that runs each (`module:function`).

A stage's function takes `(cfg: Config, ctx: StageContext)`. A stage whose code has not landed has
`target=None`; launching it exits 2 with "not implemented yet".
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Callable

from etils import epath

from jz3_jax.errors import UserError


class StageNotImplemented(UserError):
    """The stage exists in the design but its code has not landed yet."""


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a running stage gets besides its config."""

    name: str
    stage_dir: epath.Path  # run_dir/STAGE, local or a URL (gs://...)
    logger: logging.Logger
    process_index: int = 0
    process_count: int = 1


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    help: str
    target: str | None  # "package.module:function"

    def load(self) -> Callable:
        if self.target is None:
            raise StageNotImplemented(f"stage {self.name!r} is not implemented yet")
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("corpus", "collect math texts and cut them into snippets of at most 1,000 characters",
              "jz3_jax.corpus.stage:run"),
        Stage("select", "score candidate snippets by gradient influence (LESS) and keep the top ones",
              "jz3_jax.influence.stage:run"),
        Stage("distill", "ask the teacher to write problems and solutions for snippets (cached, budgeted)",
              "jz3_jax.distill.stage:run"),
        Stage("sft", "fine-tune the synthesizer on the teacher's outputs", "jz3_jax.train.trainer:run"),
        Stage("synthesize", "let the synthesizer write problems and solutions for many prompts",
              "jz3_jax.synth.synthesize_stage:run"),
        Stage("filter", "parse, deduplicate and decontaminate synthetic problems into training records",
              "jz3_jax.synth.filter_stage:run"),
        Stage("pretrain", "train the final model on the synthetic corpus (packed, loss on outputs)", "jz3_jax.train.trainer:run"),
        Stage("eval", "generate answers on math benchmarks (CoT and tool use)", "jz3_jax.eval.stage:run_eval"),
        Stage("grade", "grade generated answers against references and report accuracy",
              "jz3_jax.eval.stage:run_grade"),
        Stage("serve", "serve a checkpoint behind an OpenAI-compatible HTTP API", "jz3_jax.serve.server:run"),
        Stage("compile", "ahead-of-time compile the train step for a Cloud TPU topology; report memory and fit",
              "jz3_jax.train.compile:run"),
        Stage("convert", "convert a checkpoint between Hugging Face, GGUF (import) and orbax", "jz3_jax.checkpoint.convert:run"),
        Stage("bench", "time one kind of work (forward, train, decode, influence) against a reference", "jz3_jax.bench.stage:run"),
        Stage("pipeline", "run the stages in order, each reading the artifacts of the one before",
              "jz3_jax.pipeline.stage:run"),
    ]
}


def get_stage(name: str) -> Stage:
    """The stage called `name`, or a UserError listing the valid ones."""
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[name]
