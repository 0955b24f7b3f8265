"""The artifact table: every file or directory one stage writes for another to read.

A stage writes its artifacts under its own directory (`RUN_DIR/STAGE/`, or `RUN_DIR/STEP/` in a
pipeline, where the two distill and sft rounds get distinct step directories) and reads another
stage's through `locate`; nothing else spells these paths out. The pipeline wires a step's inputs
with the same names (`pipeline/steps.py`).
"""

from __future__ import annotations

import dataclasses
import os

from etils import epath

from jz3_jax.runtime.paths import as_path


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One artifact: its name (`STAGE.what`), the stage that writes it, its path inside the
    producer's directory (a `*` pattern for a set of files), and what it holds."""

    name: str
    producer: str
    relpath: str
    help: str


ARTIFACTS: dict[str, Artifact] = {a.name: a for a in [
    Artifact("corpus.snippets", "corpus", "snippets.jsonl", "math snippets of at most 1,000 characters"),
    Artifact("corpus.report", "corpus", "report.json", "counts per source"),
    Artifact("distill.kd", "distill", "kd.jsonl", "the teacher's problems and solutions (SFT records)"),
    Artifact("distill.report", "distill", "report.json", "requests, spend, cache hits"),
    Artifact("sft.hf", "sft", "hf", "the fine-tuned synthesizer, a Hugging Face directory"),
    Artifact("select.selected", "select", "selected.jsonl", "the snippets kept by influence"),
    Artifact("select.scores", "select", "scores.jsonl", "every candidate's influence score"),
    Artifact("select.report", "select", "report.json", "selection settings and threshold"),
    Artifact("synthesize.completions", "synthesize", "completions/*.jsonl", "the synthesizer's outputs, per process"),
    Artifact("synthesize.report", "synthesize", "report*.json", "counts, throughput and engine counters, per process"),
    Artifact("filter.records", "filter", "records.jsonl", "deduplicated, decontaminated training records"),
    Artifact("filter.removed", "filter", "removed.jsonl", "every dropped completion with its reason"),
    Artifact("filter.report", "filter", "report.json", "counts per reason"),
    Artifact("pretrain.hf", "pretrain", "hf", "the trained model, a Hugging Face directory"),
    Artifact("pretrain.data", "pretrain", "data", "the pretraining mix the pipeline assembles (optional)"),
    Artifact("eval.metrics", "eval", "metrics.json", "accuracy per benchmark"),
    Artifact("eval.samples", "eval", "samples.jsonl", "every generation with its grade"),
]}


def artifact(name: str) -> Artifact:
    """The artifact called `name`; KeyError lists the known ones."""
    if name not in ARTIFACTS:
        raise KeyError(f"unknown artifact {name!r}; artifacts: {', '.join(ARTIFACTS)}")
    return ARTIFACTS[name]


def output(stage_dir: str | os.PathLike, name: str) -> epath.Path:
    """Where the running stage writes its artifact `name` (under its own directory)."""
    return as_path(stage_dir) / artifact(name).relpath


def locate(run_dir: str | os.PathLike, name: str, step: str | None = None) -> epath.Path:
    """Where artifact `name` lies in a run directory: under `RUN_DIR/<producer>/`, or under
    `RUN_DIR/<step>/` for a pipeline step that ran the producer under another name."""
    a = artifact(name)
    return as_path(run_dir) / (step or a.producer) / a.relpath


def locate_str(run_dir: str | os.PathLike, name: str, step: str | None = None) -> str:
    """`locate` as a string, for config keys that hold paths."""
    return os.fspath(locate(run_dir, name, step))
