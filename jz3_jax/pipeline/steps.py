"""The pipeline's steps: which stage each runs, what it reads, and the config sections it depends on.

Every step writes to its own directory `RUN_DIR/STEP/` (the two distill rounds and the two sft rounds
get distinct ones) and reads the artifacts of the steps before it through ordinary config keys,
set here by convention before the step's own overrides (`pipeline.STEP=key=value,...`) apply:

    corpus           corpus.sources                            -> corpus/snippets.jsonl
    distill_initial  corpus/snippets.jsonl                     -> distill_initial/kd.jsonl
    sft_initial      distill_initial/kd.jsonl, the synthesizer -> sft_initial/hf
    select           corpus/snippets.jsonl, sft_initial/hf     -> select/selected.jsonl
    distill_boost    select/selected.jsonl (+ the first round) -> distill_boost/kd.jsonl (both rounds)
    sft_boost        distill_boost/kd.jsonl, the synthesizer   -> sft_boost/hf
    synthesize       corpus/snippets.jsonl, sft_boost/hf       -> synthesize/completions/
    filter           synthesize/completions/*.jsonl            -> filter/records.jsonl
    pretrain         filter/records.jsonl, model.checkpoint    -> pretrain/hf
    eval_base        model.checkpoint                          -> eval_base/metrics.json
    eval             pretrain/hf                               -> eval/metrics.json
    report           everything above                          -> report.md, report/*.png

Both distill rounds share one answer cache, RUN_DIR/teacher_cache/ (unless `distill.cache_dir` is
set), so rerunning a round after a config change never pays for an answer twice.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from jz3_jax.errors import ConfigError
from jz3_jax.pipeline.config import STEPS
from jz3_jax.runtime.paths import as_path

if TYPE_CHECKING:
    from jz3_jax.config import Config

TRAINING = ("model", "mesh", "optimizer", "data", "train", "lora")
DECODING = ("model", "engine", "sampling")


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: its directory name, the registered stage it runs, the config sections that decide
    its output (its fingerprint covers these and its inputs' fingerprints), and the steps it reads."""

    name: str
    stage: str
    sections: tuple[str, ...]
    deps: tuple[str, ...]


ALL = {s.name: s for s in [
    Step("corpus", "corpus", ("corpus",), ()),
    Step("distill_initial", "distill", ("teacher", "distill"), ("corpus",)),
    Step("sft_initial", "sft", TRAINING, ("distill_initial",)),
    Step("select", "select", (*TRAINING, "select"), ("corpus", "sft_initial")),
    Step("distill_boost", "distill", ("teacher", "distill"), ("select", "distill_initial")),
    Step("sft_boost", "sft", TRAINING, ("distill_boost",)),
    Step("synthesize", "synthesize", (*DECODING, "synthesize"), ("corpus", "sft_boost")),
    Step("filter", "filter", ("filter",), ("synthesize",)),
    Step("pretrain", "pretrain", TRAINING, ("filter",)),
    Step("eval_base", "eval", (*DECODING, "eval"), ()),
    Step("eval", "eval", (*DECODING, "eval"), ("pretrain",)),
    Step("report", "report", (), ()),
]}
assert list(ALL) == STEPS
BOOST_ONLY = ("select", "distill_boost", "sft_boost")
ROUNDS = {"distill": ("distill_initial", "distill_boost"), "sft": ("sft_initial", "sft_boost")}


def pipeline_steps(cfg: Config) -> list[Step]:
    """The steps of this pipeline in order (without the boost round when `pipeline.boost` is off),
    with `synthesize` reading the initial synthesizer when there is no boost round."""
    steps = [s for s in ALL.values() if cfg.pipeline.boost or s.name not in BOOST_ONLY]
    if not cfg.pipeline.boost:
        steps = [dataclasses.replace(s, deps=("corpus", "sft_initial")) if s.name == "synthesize" else s
                 for s in steps]
    return steps


def selected_names(cfg: Config, steps: list[Step]) -> list[str]:
    """`pipeline.stages` resolved to step names in pipeline order (empty = all); ConfigError names an
    unknown one."""
    names = [s.name for s in steps]
    wanted = set()
    for entry in cfg.pipeline.stages:
        expanded = ROUNDS.get(entry, (entry,))
        for name in expanded:
            if name not in ALL:
                raise ConfigError(f"pipeline.stages: unknown stage {entry!r}; stages: {', '.join(names)} "
                                  f"(distill and sft name both rounds)")
            if name not in names and entry not in ROUNDS:
                raise ConfigError(f"pipeline.stages: {name!r} is not part of this pipeline (pipeline.boost=false)")
            wanted.add(name)
    return [n for n in names if n in wanted] if wanted else names


def configure(step: Step, cfg: Config) -> Config:
    """The config `step` runs with: a copy of the pipeline's config, its inputs and outputs set by
    convention, then the step's own overrides (`pipeline.<step>`)."""
    from jz3_jax.config import apply_overrides

    c = _copy(cfg)
    run = as_path(cfg.run_dir)

    def path(*parts: str) -> str:
        return os.fspath(run.joinpath(*parts))

    base = cfg.model.checkpoint
    synthesizer = cfg.pipeline.synthesizer or base
    if step.stage == "distill":
        c.distill.cache_dir = cfg.distill.cache_dir or path("teacher_cache")
    if step.name == "distill_initial":
        c.distill.snippets = path("corpus", "snippets.jsonl")
    elif step.name == "distill_boost":
        c.distill.snippets = path("select", "selected.jsonl")
        c.distill.num_snippets = 0  # every selected snippet (select.top_k / top_fraction set how many)
        c.distill.include = [path("distill_initial", "kd.jsonl")]  # the first round already merged its includes
    elif step.name == "sft_initial":
        c.model.checkpoint, c.data.train_path = synthesizer, path("distill_initial", "kd.jsonl")
    elif step.name == "select":
        c.model.checkpoint, c.select.candidates = path("sft_initial", "hf"), path("corpus", "snippets.jsonl")
    elif step.name == "sft_boost":
        c.model.checkpoint, c.data.train_path = synthesizer, path("distill_boost", "kd.jsonl")
    elif step.name == "synthesize":
        c.model.checkpoint = path("sft_boost" if cfg.pipeline.boost else "sft_initial", "hf")
        c.synthesize.snippets, c.synthesize.prompts = path("corpus", "snippets.jsonl"), ""
        c.synthesize.chat_template = False  # the synthesizer was fine-tuned on the raw prompts
    elif step.name == "filter":
        c.filter.inputs = path("synthesize", "completions", "*.jsonl")
    elif step.name == "pretrain":
        c.model.checkpoint = base
        c.data.train_path = path("pretrain", "data") if cfg.pipeline.pretrain_mix else path("filter", "records.jsonl")
    elif step.name == "eval_base":
        c.model.checkpoint = base
    elif step.name == "eval":
        c.model.checkpoint = path("pretrain", "hf")
    own = getattr(cfg.pipeline, step.name, None) or []
    if any(o.split("=", 1)[0].strip().startswith("pipeline.") for o in own):
        raise ConfigError(f"pipeline.{step.name}: a step's overrides cannot set pipeline.* keys")
    return apply_overrides(c, list(own))


def prepare(step: Step, cfg: Config) -> None:
    """Inputs a step needs beyond config keys, written before it runs (process 0): `pretrain` with a
    `pipeline.pretrain_mix` reads RUN_DIR/pretrain/data/, the synthetic records and the mix side by side."""
    if step.name != "pretrain" or not cfg.pipeline.pretrain_mix:
        return
    mix = as_path(cfg.pipeline.pretrain_mix)
    if not mix.exists():
        raise ConfigError(f"pipeline.pretrain_mix: {cfg.pipeline.pretrain_mix!r} does not exist")
    data = as_path(cfg.run_dir) / "pretrain" / "data"
    data.mkdir(parents=True, exist_ok=True)
    records = as_path(cfg.run_dir) / "filter" / "records.jsonl"
    for source, name in ((records, "1_synthetic.jsonl"), (mix, "2_mix.jsonl")):
        if source.exists() and source.stat().length > 0:
            source.copy(data / name, overwrite=True)


def _copy(cfg: Config) -> Config:
    from jz3_jax.config import config_from_dict, config_to_dict

    return config_from_dict(config_to_dict(cfg))
