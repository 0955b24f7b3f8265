"""`select.method=random`: the ablation baseline of influence selection (the paper's "random
sampling"): the same number of candidates (`select.top_k` / `top_fraction`), drawn uniformly with the
run's seed, written in the same files as influence selection (`score` is the random draw)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from jz3_jax.influence import inputs as inputs_lib
from jz3_jax.influence.scoring import top_indices
from jz3_jax.runtime import artifacts
from jz3_jax.runtime.paths import atomic_write

if TYPE_CHECKING:
    from jz3_jax.influence.spec import SelectSpec
    from jz3_jax.stages import StageContext


def run_random(spec: SelectSpec, ctx: StageContext, candidates_path: str) -> dict:
    """Write scores.jsonl, selected.jsonl and report.json for a seeded random selection (process 0)."""
    s = spec.select
    candidates = inputs_lib.read_candidates(candidates_path)
    if ctx.process_index != 0:
        return {}
    values = np.random.default_rng(spec.seed).random(len(candidates))
    chosen = top_indices(values, s.top_k, s.top_fraction)
    with atomic_write(artifacts.output(ctx.stage_dir, "select.scores")) as f:
        for i, c in enumerate(candidates):
            f.write(json.dumps({"id": inputs_lib.candidate_id(c, i), "score": float(values[i])}) + "\n")
    with atomic_write(artifacts.output(ctx.stage_dir, "select.selected")) as f:
        for i in chosen.tolist():
            f.write(json.dumps({**candidates[i].record, "score": float(values[i])}) + "\n")
    report = {"method": "random", "candidates": len(candidates), "selected": int(len(chosen)),
              "threshold": float(values[chosen[-1]]) if len(chosen) else None, "seed": spec.seed}
    with atomic_write(artifacts.output(ctx.stage_dir, "select.report")) as f:
        json.dump(report, f, indent=1)
    ctx.logger.info("selected %d of %d candidates at random (seed %d)", len(chosen), len(candidates), spec.seed)
    return report
