"""Stage names, one-line descriptions, the function that runs each (`module:function`) and the
typed spec it receives (`module:Class`).

A stage's function takes `(spec, ctx: StageContext)`: `spec` is a frozen dataclass whose fields are
the config sections the stage reads (built from the root config by `jz3_jax.config.build_spec`), and
whose `CONSUMES` / `PRODUCES` name its artifacts (`runtime/artifacts.py`). Only `pipeline`, which
composes the others, takes the root config (`spec=None`). A stage whose code has not landed has
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
    run_dir: epath.Path | None = None  # where other stages' artifacts lie; None = stage_dir's parent

    def __post_init__(self) -> None:
        if self.run_dir is None:
            object.__setattr__(self, "run_dir", epath.Path(self.stage_dir).parent)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    help: str
    target: str | None  # "package.module:function"
    spec: str | None = None  # "package.module:Class"; None: the root config (pipeline only)

    def load(self) -> Callable:
        """The stage's function."""
        if self.target is None:
            raise StageNotImplemented(f"stage {self.name!r} is not implemented yet")
        return _resolve(self.target)

    def spec_type(self) -> type | None:
        """The stage's spec class (a light import: specs live beside the config sections)."""
        return _resolve(self.spec) if self.spec else None


def _resolve(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


_S = [  # name, help, function, spec
    ("corpus", "collect math texts and cut them into snippets of at most 1,000 characters",
     "jz3_jax.corpus.stage:run", "jz3_jax.corpus.spec:CorpusSpec"),
    ("select", "score candidate snippets by gradient influence (LESS) and keep the top ones",
     "jz3_jax.influence.stage:run", "jz3_jax.influence.spec:SelectSpec"),
    ("distill", "ask the teacher to write problems and solutions for snippets (cached, budgeted)",
     "jz3_jax.distill.stage:run", "jz3_jax.distill.spec:DistillSpec"),
    ("sft", "fine-tune the synthesizer on the teacher's outputs",
     "jz3_jax.train.trainer:run", "jz3_jax.train.spec:SftSpec"),
    ("synthesize", "let the synthesizer write problems and solutions for many prompts",
     "jz3_jax.synth.synthesize_stage:run", "jz3_jax.synth.spec:SynthesizeSpec"),
    ("filter", "parse, deduplicate and decontaminate synthetic problems into training records",
     "jz3_jax.synth.filter_stage:run", "jz3_jax.synth.spec:FilterSpec"),
    ("pretrain", "train the final model on the synthetic corpus (packed, loss on outputs)",
     "jz3_jax.train.trainer:run", "jz3_jax.train.spec:PretrainSpec"),
    ("eval", "generate answers on math benchmarks (CoT and tool use)",
     "jz3_jax.eval.stage:run_eval", "jz3_jax.eval.spec:EvalSpec"),
    ("grade", "grade generated answers against references and report accuracy",
     "jz3_jax.eval.stage:run_grade", "jz3_jax.eval.spec:GradeSpec"),
    ("serve", "serve a checkpoint behind an OpenAI-compatible HTTP API",
     "jz3_jax.serve.server:run", "jz3_jax.serve.spec:ServeSpec"),
    ("compile", "ahead-of-time compile the train step for a Cloud TPU topology; report memory and fit",
     "jz3_jax.train.compile:run", "jz3_jax.train.spec:CompileSpec"),
    ("convert", "convert a checkpoint between Hugging Face, GGUF (import) and orbax",
     "jz3_jax.checkpoint.convert:run", "jz3_jax.checkpoint.spec:ConvertSpec"),
    ("bench", "time one kind of work (forward, train, decode, influence) against a reference",
     "jz3_jax.bench.stage:run", "jz3_jax.bench.spec:BenchSpec"),
    ("pipeline", "run the stages in order, each reading the artifacts of the one before",
     "jz3_jax.pipeline.stage:run", None),
]
STAGES: dict[str, Stage] = {name: Stage(name, text, target, spec) for name, text, target, spec in _S}


def get_stage(name: str) -> Stage:
    """The stage called `name`, or a UserError listing the valid ones."""
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[name]
