"""The pipeline's steps: which stage each runs and which artifacts of earlier steps it reads.

Every step writes to its own directory `RUN_DIR/STEP/` (the two distill rounds and the two sft rounds
get distinct ones) and reads the artifacts of the steps before it (`runtime/artifacts.py`) through
ordinary config keys, set by the links below before the step's own overrides
(`pipeline.STEP=key=value,...`) apply:

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

The config sections a step depends on are exactly those its stage's spec declares
(`stages/registry.py`), so the fingerprint (`markers.py`) covers what the stage reads and nothing else.
Both distill rounds share one answer cache, RUN_DIR/teacher_cache/ (unless `distill.cache_dir` is
set), so rerunning a round after a config change never pays for an answer twice.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from jz3_jax.errors import ConfigError
from jz3_jax.pipeline.config import STEPS
from jz3_jax.runtime import artifacts
from jz3_jax.runtime.paths import as_path

if TYPE_CHECKING:
    from jz3_jax.config import Config

BASE, SYNTHESIZER = "<model.checkpoint>", "<pipeline.synthesizer>"  # checkpoints the pipeline config names
TEACHER_CACHE = "teacher_cache"  # RUN_DIR/teacher_cache/, shared by both distill rounds


@dataclasses.dataclass(frozen=True)
class Link:
    """Config key `key` of a step is set to artifact `artifact` of the earlier step `step` (as a
    one-element list when `as_list`)."""

    key: str
    step: str
    artifact: str
    as_list: bool = False


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: its directory name, the registered stage it runs, the artifacts it reads (`links`)
    and fixed settings (`settings`: key -> value, `BASE` / `SYNTHESIZER` for the pipeline's checkpoints)."""

    name: str
    stage: str
    links: tuple[Link, ...] = ()
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def deps(self) -> tuple[str, ...]:
        """The steps whose artifacts this step reads, in order."""
        return tuple(dict.fromkeys(link.step for link in self.links))


ALL = {s.name: s for s in [
    Step("corpus", "corpus"),
    Step("distill_initial", "distill", (Link("distill.snippets", "corpus", "corpus.snippets"),)),
    Step("sft_initial", "sft", (Link("data.train_path", "distill_initial", "distill.kd"),),
         (("model.checkpoint", SYNTHESIZER),)),
    Step("select", "select", (Link("select.candidates", "corpus", "corpus.snippets"),
                              Link("model.checkpoint", "sft_initial", "sft.hf"))),
    # Every selected snippet (select.top_k / top_fraction set how many); the first round already
    # merged its own includes.
    Step("distill_boost", "distill", (Link("distill.snippets", "select", "select.selected"),
                                      Link("distill.include", "distill_initial", "distill.kd", as_list=True)),
         (("distill.num_snippets", 0),)),
    Step("sft_boost", "sft", (Link("data.train_path", "distill_boost", "distill.kd"),),
         (("model.checkpoint", SYNTHESIZER),)),
    # The synthesizer was fine-tuned on the raw prompts: no chat template.
    Step("synthesize", "synthesize", (Link("synthesize.snippets", "corpus", "corpus.snippets"),
                                      Link("model.checkpoint", "sft_boost", "sft.hf")),
         (("synthesize.prompts", ""), ("synthesize.chat_template", False))),
    Step("filter", "filter", (Link("filter.inputs", "synthesize", "synthesize.completions"),)),
    Step("pretrain", "pretrain", (Link("data.train_path", "filter", "filter.records"),),
         (("model.checkpoint", BASE),)),
    Step("eval_base", "eval", (), (("model.checkpoint", BASE),)),
    Step("eval", "eval", (Link("model.checkpoint", "pretrain", "pretrain.hf"),)),
    Step("report", "report"),
]}
assert list(ALL) == STEPS
BOOST_ONLY = ("select", "distill_boost", "sft_boost")
ROUNDS = {"distill": ("distill_initial", "distill_boost"), "sft": ("sft_initial", "sft_boost")}


def pipeline_steps(cfg: Config) -> list[Step]:
    """The steps of this pipeline in order (without the boost round when `pipeline.boost` is off,
    when `synthesize` reads the initial synthesizer)."""
    if cfg.pipeline.boost:
        return list(ALL.values())
    steps = [s for s in ALL.values() if s.name not in BOOST_ONLY]
    return [_reading(s, "sft_boost", "sft_initial") if s.name == "synthesize" else s for s in steps]


def _reading(step: Step, old: str, new: str) -> Step:
    links = tuple(dataclasses.replace(link, step=new) if link.step == old else link for link in step.links)
    return dataclasses.replace(step, links=links)


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
    """The config `step` runs with: a copy of the pipeline's config, its inputs and settings from the
    step table, then the step's own overrides (`pipeline.<step>`)."""
    from jz3_jax.config import apply_overrides

    c = _copy(cfg)
    checkpoints = {BASE: cfg.model.checkpoint, SYNTHESIZER: cfg.pipeline.synthesizer or cfg.model.checkpoint}
    if step.stage == "distill":
        c.distill.cache_dir = cfg.distill.cache_dir or os.fspath(as_path(cfg.run_dir) / TEACHER_CACHE)
    for key, value in step.settings:
        _set(c, key, checkpoints.get(value, value) if isinstance(value, str) else value)
    for link in step.links:
        path = artifacts.locate_str(cfg.run_dir, link.artifact, link.step)
        _set(c, link.key, [path] if link.as_list else path)
    if step.name == "pretrain" and cfg.pipeline.pretrain_mix:
        c.data.train_path = artifacts.locate_str(cfg.run_dir, "pretrain.data", step.name)
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
    data = artifacts.locate(cfg.run_dir, "pretrain.data", step.name)
    data.mkdir(parents=True, exist_ok=True)
    records = artifacts.locate(cfg.run_dir, "filter.records", "filter")
    for source, name in ((records, "1_synthetic.jsonl"), (mix, "2_mix.jsonl")):
        if source.exists() and source.stat().length > 0:
            source.copy(data / name, overwrite=True)


def _set(cfg: Config, key: str, value: Any) -> None:
    """Set the config key `section.field` (the pipeline's own copy)."""
    section, field = key.split(".")
    setattr(getattr(cfg, section), field, value)


def _copy(cfg: Config) -> Config:
    from jz3_jax.config import config_from_dict, config_to_dict

    return config_from_dict(config_to_dict(cfg))
