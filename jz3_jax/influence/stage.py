"""The `select` stage: LESS-style gradient-influence selection of candidate snippets.

    python -m jz3_jax.launch select --config configs/smollm2.py select.candidates=snippets.jsonl \
        select.targets=targets.jsonl select.top_k=4000

1. warm-up (`warmup.py`): LoRA training on a random `select.warmup_fraction` of the candidates,
   one checkpoint with Adam moments per epoch;
2. features (`featurize.py`): for every epoch, Adam features of the candidates and gradient
   features of the targets, projected to `select.proj_dim`, into resumable stores (`features.py`);
   process i of n takes examples i, i + n, ... on its own local devices;
3. scores (`scoring.py`, process 0): checkpoint-weighted cosines, per-task mean then max, top-k.

Outputs under RUN_DIR/select/: scores.jsonl, selected.jsonl, scores.png, report.json, warmup/,
features/. A rerun skips the finished warm-up and every stored feature.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from jz3_jax.errors import ConfigError
from jz3_jax.influence import inputs as inputs_lib
from jz3_jax.influence.projection import PROJECTIONS
from jz3_jax.influence.scoring import AGGREGATES, scores, top_indices
from jz3_jax.runtime import peers
from jz3_jax.runtime import artifacts
from jz3_jax.runtime.paths import atomic_write, is_local
from jz3_jax.stages import StageContext

if TYPE_CHECKING:
    from jz3_jax.influence.spec import SelectSpec


def check_config(spec: SelectSpec) -> None:
    s = spec.select
    if s.projection not in PROJECTIONS:
        raise ConfigError(f"select.projection must be one of {', '.join(PROJECTIONS)}, got {s.projection!r}")
    if s.aggregate not in AGGREGATES:
        raise ConfigError(f"select.aggregate must be one of {', '.join(AGGREGATES)}, got {s.aggregate!r}")
    if s.proj_dim < 32 or s.proj_dim % 32:
        raise ConfigError(f"select.proj_dim must be a positive multiple of 32, got {s.proj_dim}")
    if s.top_k < 0 or not 0 <= s.top_fraction <= 1 or (s.top_k == 0 and s.top_fraction == 0):
        raise ConfigError("set select.top_k > 0 or select.top_fraction in (0, 1]")
    if not 0 < s.warmup_fraction <= 1 or s.warmup_epochs < 1:
        raise ConfigError("select.warmup_fraction must be in (0, 1] and select.warmup_epochs >= 1")
    if s.bucket < 1 or s.max_length < 1 or s.token_budget < 1:
        raise ConfigError("select.bucket, select.max_length and select.token_budget must be positive")
    check_gradients(s)


def check_gradients(s) -> None:
    """`select.gradients`, `select.params`, `select.precondition` and the logra dims agree."""
    if s.gradients not in ("exact", "logra"):
        raise ConfigError(f"select.gradients must be exact or logra, got {s.gradients!r}")
    if s.params not in ("lora", "linear"):
        raise ConfigError(f"select.params must be lora or linear, got {s.params!r}")
    if s.precondition not in ("auto", "none", "factored", "exact"):
        raise ConfigError(f"select.precondition must be auto, none, factored or exact, got {s.precondition!r}")
    if s.gradients == "logra" and s.precondition == "exact":
        raise ConfigError("select.precondition=exact needs select.gradients=exact (logra offers none or factored)")
    if s.gradients == "exact" and (s.params != "lora" or s.precondition == "factored"):
        raise ConfigError("select.gradients=exact projects the LoRA gradients (select.params=lora) with "
                          "select.precondition=exact or none")
    if s.params == "linear" and s.precondition in ("auto", "factored"):
        raise ConfigError("select.params=linear has no Adam moments of the base weights (the warm-up trains LoRA): "
                          "set select.precondition=none")
    if s.logra_in < 0 or s.logra_out < 0:
        raise ConfigError("select.logra_in and select.logra_out must be >= 0 (0 = derived from select.proj_dim)")


def _digest(values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _load_inputs(spec: SelectSpec, run_dir):
    """(candidates, targets, tokenizer): everything that can fail on bad input, before any compile."""
    from jz3_jax.checkpoint import prepare_model

    import logging

    check_config(spec)
    s = spec.select
    candidates_path = s.candidates or artifacts.locate_str(run_dir, "corpus.snippets")
    targets = inputs_lib.read_targets(s.targets)
    candidates = inputs_lib.read_candidates(candidates_path)
    tokenizer = prepare_model(spec.model, logging.getLogger("jz3_jax"), needed_by="select").tokenizer
    return candidates, targets, tokenizer


def run(spec: SelectSpec, ctx: StageContext) -> None:
    """The whole stage (every process runs it; process 0 writes the scores)."""
    if spec.select.method not in ("influence", "random"):
        raise ConfigError(f"select.method must be influence or random, got {spec.select.method!r}")
    if spec.select.method == "random":
        from jz3_jax.influence.random_select import run_random

        check_config(spec)
        run_random(spec, ctx, spec.select.candidates or artifacts.locate_str(ctx.run_dir, "corpus.snippets"))
        return
    error, loaded = None, None
    try:
        if not is_local(ctx.stage_dir):
            raise ConfigError("select keeps its feature stores as memory-mapped files: run_dir must be a local "
                              "or NFS path (not a URL)")
        loaded = _load_inputs(spec, ctx.run_dir)
    except Exception as e:  # noqa: BLE001 - re-raised by agree, here and as PeerFailed in the peers
        error = e
    peers.agree("select inputs", error)
    candidates, targets, tokenizer = loaded
    started = time.perf_counter()

    from jz3_jax.influence.warmup import run_warmup

    warm = run_warmup(spec, ctx, candidates)
    features_dir, feature_stats = _features(spec, ctx, candidates, targets, tokenizer, warm)
    peers.agree("select features", None)
    if ctx.process_index != 0:
        return
    _score_and_write(spec, ctx, candidates, targets, warm, features_dir, feature_stats, time.perf_counter() - started)


def _features(spec: SelectSpec, ctx: StageContext, candidates, targets, tokenizer, warm: dict):
    from jz3_jax.influence.features import FeatureStore
    from jz3_jax.influence.featurize import FeatureModel, fill_store

    s = spec.select
    enc_c = inputs_lib.encode_items(candidates, tokenizer, s.max_length)
    enc_t = inputs_lib.encode_items(targets, tokenizer, s.max_length)
    if s.gradients == "logra":
        from jz3_jax.influence.logra_model import LograModel, candidate_precondition

        model = LograModel(spec, warm["lora"], tuple(warm["adam"]))
        dim = model.dim
        projection = {"dim": dim, "kind": "logra", "params": s.params, "k": [model.k_in, model.k_out],
                      "precondition": candidate_precondition(s), "seed": s.proj_seed, "max_length": s.max_length}
    else:
        model = FeatureModel(spec, warm["lora"], tuple(warm["adam"]))
        dim = s.proj_dim
        projection = {"dim": s.proj_dim, "kind": s.projection, "seed": s.proj_seed, "max_length": s.max_length}
        if s.precondition == "none":
            projection["precondition"] = "none"
    ids = {"candidates": _digest([inputs_lib.candidate_id(c, i) for i, c in enumerate(candidates)]
                                 + [[c.input, c.output] for c in candidates]),
           "targets": _digest([[t.task, t.input, t.output] for t in targets])}
    base = ctx.stage_dir / "features"
    stats = {"truncated_candidates": enc_c.truncated, "truncated_targets": enc_t.truncated, "stores": {}}
    for epoch in warm["epochs"]:
        model.load_epoch(os.fspath(ctx.stage_dir / "warmup" / epoch["file"]), warm["paths"])
        for kind, encoded, adam in (("candidates", enc_c, s.precondition != "none"), ("targets", enc_t, False)):
            fingerprint = {**projection, "examples": ids[kind], "feature": "adam" if adam else "grad",
                           "epoch": epoch["epoch"]}
            store = FeatureStore(os.fspath(base / f"epoch_{epoch['epoch']}" / kind), len(encoded), dim,
                                 fingerprint, ctx.process_index)
            share = np.arange(ctx.process_index, len(encoded), ctx.process_count)
            stats["stores"][f"epoch_{epoch['epoch']}/{kind}"] = fill_store(model, store, encoded, share, adam=adam,
                                                                           select=spec.select, logger=ctx.logger)
    return base, stats


def _score_and_write(spec: SelectSpec, ctx: StageContext, candidates, targets, warm: dict, base, feature_stats: dict,
                     seconds: float) -> None:
    from jz3_jax.influence.features import FeatureStore

    s = spec.select
    cand_sets, targ_sets = [], []
    for epoch in warm["epochs"]:
        for kind, items, out in (("candidates", candidates, cand_sets), ("targets", targets, targ_sets)):
            directory = os.fspath(base / f"epoch_{epoch['epoch']}" / kind)
            meta = json.loads((base / f"epoch_{epoch['epoch']}" / kind / "meta.json").read_text())
            out.append(FeatureStore(directory, len(items), meta["dim"], meta["fingerprint"], ctx.process_index).read())
    tasks = [t.task for t in targets]
    values, per_task, names = scores(cand_sets, targ_sets, tasks, [e["mean_lr"] for e in warm["epochs"]], s.aggregate)
    chosen = top_indices(values, s.top_k, s.top_fraction)
    directory = ctx.stage_dir
    with atomic_write(artifacts.output(directory, "select.scores")) as f:
        for i, c in enumerate(candidates):
            f.write(json.dumps({"id": inputs_lib.candidate_id(c, i), "score": float(values[i])}) + "\n")
    with atomic_write(artifacts.output(directory, "select.selected")) as f:
        for i in chosen.tolist():
            f.write(json.dumps({**candidates[i].record, "score": float(values[i])}) + "\n")
    threshold = float(values[chosen[-1]]) if len(chosen) else None
    plot_scores(values, threshold, directory / "scores.png")
    report = {"candidates": len(candidates), "targets": len(targets), "tasks": names, "selected": int(len(chosen)),
              "threshold": threshold, "aggregate": s.aggregate, "gradients": s.gradients,
              "projection": s.projection if s.gradients == "exact" else "logra", "proj_dim": cand_sets[0].shape[1],
              "checkpoints": warm["epochs"], "lora": warm["lora"], "warmup_records": warm["warmup_records"],
              "score_stats": {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())},
              "features": feature_stats, "seconds": round(seconds, 3)}
    with atomic_write(artifacts.output(directory, "select.report")) as f:
        json.dump(report, f, indent=1)
    ctx.logger.info("selected %d of %d candidates (threshold %s); outputs in %s", len(chosen), len(candidates),
                    threshold, directory)


def plot_scores(values, threshold: float | None, path) -> None:
    """A histogram of influence scores with the selection threshold, written atomically to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="#4878a8")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"selection threshold {threshold:.4f}")
        ax.legend()
    ax.set_xlabel("influence score (checkpoint-weighted cosine)")
    ax.set_ylabel("candidates")
    ax.set_title(f"select: {len(values)} candidates")
    fig.tight_layout()
    tmp = path.parent / f".{path.name}.tmp.png"
    fig.savefig(os.fspath(tmp), dpi=100)
    plt.close(fig)
    tmp.replace(path)
