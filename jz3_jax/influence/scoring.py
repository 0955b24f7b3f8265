"""Checkpoint-weighted cosine scores, aggregated over target tasks, and the top candidates.

score(c) = aggregate over tasks t of  sum_e w_e * mean_{x in t} cos(C_e[c], T_e[x]),
with w_e = each warm-up epoch's mean learning rate, normalised to sum 1. The mean of cosines over a
task equals the dot product with the mean of the task's unit target features, so candidates are
scored in chunks against one vector per (checkpoint, task) and the [N, M] matrix never exists.
"""

from __future__ import annotations

import numpy as np

AGGREGATES = ("mean_max", "mean")
_CHUNK = 65536


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-30)


def task_means(targets: np.ndarray, tasks: list[str]) -> tuple[list[str], np.ndarray]:
    """(task names in first-seen order, [tasks, k] means of the unit target features per task)."""
    names = list(dict.fromkeys(tasks))
    unit = unit_rows(targets)
    labels = np.asarray([names.index(t) for t in tasks])
    return names, np.stack([unit[labels == i].mean(axis=0) for i in range(len(names))])


def checkpoint_weights(mean_lrs: list[float]) -> np.ndarray:
    w = np.asarray(mean_lrs, np.float64)
    if w.sum() <= 0:
        return np.full(len(w), 1.0 / len(w))
    return w / w.sum()


def scores(candidate_sets: list[np.ndarray], target_sets: list[np.ndarray], tasks: list[str],
           mean_lrs: list[float], aggregate: str = "mean_max") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(scores [N], per-task scores [N, tasks], task names) from per-checkpoint features."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"select.aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    weights = checkpoint_weights(mean_lrs)
    count = candidate_sets[0].shape[0]
    per_task = None
    names: list[str] = []
    for w, cand, targ in zip(weights, candidate_sets, target_sets):
        names, means = task_means(targ, tasks)
        part = np.zeros((count, len(names)))
        for start in range(0, count, _CHUNK):
            part[start:start + _CHUNK] = unit_rows(cand[start:start + _CHUNK]) @ means.T
        per_task = w * part if per_task is None else per_task + w * part
    total = per_task.max(axis=1) if aggregate == "mean_max" else per_task.mean(axis=1)
    return total, per_task, names


def top_indices(values: np.ndarray, top_k: int, top_fraction: float) -> np.ndarray:
    """Indices of the best candidates, best first (ties: lower index first)."""
    n = len(values)
    k = top_k if top_k > 0 else int(np.ceil(top_fraction * n))
    k = max(0, min(n, k))
    order = np.lexsort((np.arange(n), -values))
    return order[:k]
