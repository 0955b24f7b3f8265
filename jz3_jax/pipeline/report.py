"""The pipeline's report: `RUN_DIR/report.md` and its plots in `RUN_DIR/report/`, from the artifacts.

Reads only what the steps left in the run directory (a missing artifact leaves its section saying
so), so `pipeline.stages=report` rebuilds it at any time:

- `loss.png`: training loss per step of every training stage (`STEP/metrics.jsonl`; select's
  warm-up in `select/warmup/metrics.jsonl`);
- `influence.png`: the select stage's influence scores (`select/scores.jsonl`) with the cut;
- `teacher.png`: teacher requests, calls, cache hits and accepted answers of both distill rounds;
- `lengths.png`: the synthesized completions' lengths (tokens), all and those `filter` kept;
- `filter.png`: `filter`'s removals by reason;
- an evaluation table: the base model, the trained model and the paper's figures.
"""

from __future__ import annotations

import glob
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from jz3_jax.runtime.paths import as_path, atomic_write

if TYPE_CHECKING:
    from jz3_jax.config import Config
    from jz3_jax.stages import StageContext

TRAINING_STEPS = ("sft_initial", "select/warmup", "sft_boost", "pretrain")
DISTILL_STEPS = ("distill_initial", "distill_boost")


def _json(path) -> dict | None:
    path = as_path(path)
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def _jsonl(path) -> list[dict]:
    path = as_path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    tmp = as_path(path).parent / f".{as_path(path).name}.tmp.png"
    fig.savefig(os.fspath(tmp), dpi=90)
    plt.close(fig)
    tmp.replace(as_path(path))


def loss_section(run, out) -> list[str]:
    curves = {}
    for name in TRAINING_STEPS:
        rows = [r for r in _jsonl(run / name / "metrics.jsonl") if r.get("loss") is not None]
        if rows:
            curves[name] = rows
    if not curves:
        return ["No training stage has logged metrics yet."]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False)
    lines = ["| stage | steps | first loss | last loss | last eval loss |", "|---|---|---|---|---|"]
    for ax, (name, rows) in zip(axes[0], curves.items()):
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", color="#4878a8")
        evals = [r for r in rows if r.get("eval_loss") is not None]
        if evals:
            ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o--", color="#c44e52", label="eval")
            ax.legend()
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        last_eval = f"{evals[-1]['eval_loss']:.4f}" if evals else "—"
        lines.append(f"| {name} | {rows[-1]['step']} | {rows[0]['loss']:.4f} | {rows[-1]['loss']:.4f} | {last_eval} |")
    _save(fig, out / "loss.png")
    return ["![training loss](report/loss.png)", "", *lines]


def influence_section(run, out) -> list[str]:
    scores = [r["score"] for r in _jsonl(run / "select" / "scores.jsonl")]
    report = _json(run / "select" / "report.json") or {}
    if not scores:
        return ["The select stage has not run (no `select/scores.jsonl`)."]
    threshold = report.get("threshold")
    from jz3_jax.influence.stage import plot_scores  # the select stage's own histogram, from the artifacts

    plot_scores(np.asarray(scores), threshold, as_path(out) / "influence.png")
    method = report.get("method", "influence")
    return ["![influence scores](report/influence.png)", "",
            f"{report.get('selected', '?')} of {len(scores)} candidate snippets selected ({method}; "
            f"threshold {threshold}), against {report.get('targets', '?')} target examples."]


def teacher_section(run, out) -> list[str]:
    reports = {name: _json(run / name / "report.json") for name in DISTILL_STEPS}
    reports = {k: v for k, v in reports.items() if v}
    if not reports:
        return ["No distill round has run."]
    lines = ["| round | requests | HTTP calls | cache hits | accepted | rejected | included | prompt tokens | "
             "completion tokens | spend (USD) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        lines.append(f"| {name} | {r['requests']} | {r['calls']} | {r['cache_hits']} | {r['records']} | "
                     f"{sum(r['rejected'].values())} | {r.get('included', 0)} | {r['prompt_tokens']} | "
                     f"{r['completion_tokens']} | {r['cost_estimate']:.4f} |")
    rejected = {}
    for r in reports.values():
        for reason, n in r["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    keys = ["requests", "calls", "cache_hits", "records"]
    width = 0.8 / len(reports)
    for i, (name, r) in enumerate(reports.items()):
        ax.bar([k + i * width for k in range(len(keys))], [r[k] for k in keys], width, label=name)
    ax.set_xticks([k + width * (len(reports) - 1) / 2 for k in range(len(keys))],
                  ["requests", "HTTP calls", "cache hits", "accepted"])
    ax.legend()
    ax.set_title("teacher")
    _save(fig, out / "teacher.png")
    teacher = next(iter(reports.values())).get("teacher", {})
    notes = [f"Teacher: `{teacher.get('model')}` at {teacher.get('base_url')}. Spend is "
             "`teacher.price_input_per_1m` / `price_output_per_1m` times the tokens paid in the round's last run."]
    if rejected:
        notes.append("Rejected answers by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) + ".")
    return ["![teacher](report/teacher.png)", "", *lines, "", *notes]


def lengths_section(run, out) -> list[str]:
    rows = []
    for name in sorted(glob.glob(os.fspath(run / "synthesize" / "completions" / "*.jsonl"))):
        rows += _jsonl(name)
    if not rows:
        return ["The synthesize stage has not run."]
    kept_ids = {r["id"] for r in _jsonl(run / "filter" / "records.jsonl")}
    all_lengths = [r.get("completion_tokens", 0) for r in rows]
    kept = [r.get("completion_tokens", 0) for r in rows if r["id"] in kept_ids]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = min(40, max(5, len(rows) // 3))
    ax.hist(all_lengths, bins=bins, color="#9bb7d4", label=f"all ({len(all_lengths)})")
    if kept:
        ax.hist(kept, bins=bins, color="#4878a8", label=f"kept by filter ({len(kept)})")
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("synthesized problems")
    ax.legend()
    _save(fig, out / "lengths.png")
    stopped = sum(r.get("finish_reason") == "stop" for r in rows)
    mean = sum(all_lengths) / len(all_lengths)
    return ["![synthesized lengths](report/lengths.png)", "",
            f"{len(rows)} completions, mean {mean:.0f} tokens, {stopped} ended on their own (the rest hit "
            f"`sampling.max_new_tokens`), {len(kept)} kept by filter."]


def filter_section(run, out) -> list[str]:
    report = _json(run / "filter" / "report.json")
    if report is None:
        return ["The filter stage has not run."]
    removed = report.get("removed", {})
    if removed:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.barh(list(removed), list(removed.values()), color="#c44e52")
        ax.set_xlabel("records removed")
        _save(fig, out / "filter.png")
    lines = [f"Read {report['read']}, kept {report['kept']}."]
    if removed:
        lines = ["![filter removals](report/filter.png)", "", *lines,
                 "Removed by reason: " + ", ".join(f"{k} {v}" for k, v in removed.items()) + "."]
    return lines


def eval_section(run) -> list[str]:
    from jz3_jax.eval.report import PAPER

    base, trained = _json(run / "eval_base" / "metrics.json"), _json(run / "eval" / "metrics.json")
    if base is None and trained is None:
        return ["No evaluation has run."]
    names = sorted(set((base or {}).get("datasets", {})) | set((trained or {}).get("datasets", {})))

    def cell(result, name):
        row = (result or {}).get("datasets", {}).get(name)
        return f"{100 * row['accuracy']:.1f} (n={row['n']})" if row else "—"

    header = ["dataset", "base model (%)", "trained model (%)", *(f"paper {m} (%)" for m in PAPER)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        paper = [f"{PAPER[m][name]:.1f}" if name in PAPER[m] else "—" for m in PAPER]
        lines.append(f"| {name} | {cell(base, name)} | {cell(trained, name)} | " + " | ".join(paper) + " |")
    models = f"base `{(base or {}).get('model', '?')}`, trained `{(trained or {}).get('model', '?')}`"
    setting = (trained or base).get("setting")
    policy = (trained or base).get("policy", "strict")
    agreement = (trained or base).get("agreement")
    agree = f", math-verify agrees on {100 * agreement:.1f}% of items" if agreement is not None else ""
    return [*lines, "", f"Models: {models}; setting {setting}; our grader, `{policy}` policy{agree}. The paper's "
            "figures are JiuZhang3.0 at 7B / 8x7B on the full test sets; the demo's are a 135M model on a few "
            "problems."]


def status_section(run) -> list[str]:
    status = _json(run / "pipeline" / "status.json") or {}
    if not status:
        return []
    lines = ["| stage | last run took (s) | finished |", "|---|---|---|"]
    for name, row in status.items():
        lines.append(f"| {name} | {row['seconds']} | {row['finished']} |")
    return lines


def build_report(cfg: Config, ctx: StageContext) -> str:
    """Write RUN_DIR/report.md and the plots in RUN_DIR/report/ (process 0); returns the markdown path."""
    run = as_path(cfg.run_dir)
    if ctx.process_index != 0:
        return os.fspath(run / "report.md")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        ("Stages", status_section(run)),
        ("Training loss", loss_section(run, out)),
        ("Influence selection", influence_section(run, out)),
        ("Teacher calls and spend", teacher_section(run, out)),
        ("Synthesized problems", lengths_section(run, out)),
        ("Filter", filter_section(run, out)),
        ("Evaluation", eval_section(run)),
    ]
    text = [f"# Pipeline report: {cfg.run_dir}", ""]
    for title, lines in sections:
        if lines:
            text += [f"## {title}", "", *lines, ""]
    with atomic_write(run / "report.md") as f:
        f.write("\n".join(text))
    ctx.logger.info("report: %s", run / "report.md")
    return os.fspath(run / "report.md")
