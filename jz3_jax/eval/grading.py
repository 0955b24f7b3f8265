"""The two graders: ours (under a policy, `strict` by default, or `paper`) and math-verify.

`grade(text, gold, choices)` returns both verdicts for one item; `grade_all(items)` grades many
on a pool of worker processes (one per core by default) with a progress bar. Multiple-choice
items (with `choices`) compare option letters. Every verdict is computed in a worker process with
a per-item timeout (`grader/worker.py`), so grading works from any thread and never hangs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Iterable, Sequence

from jz3_jax.eval.grader.policies import POLICIES, check_policy, predicted_answer
from jz3_jax.eval.grader.worker import WorkerPool, shared_pool

__all__ = ["Grade", "GradeItem", "POLICIES", "agreement", "grade", "grade_all"]


@dataclasses.dataclass(frozen=True)
class Grade:
    """One item's verdicts: the answer read, ours, math-verify's, and why ours decided."""

    pred: str
    correct: bool
    correct_math_verify: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class GradeItem:
    """What one item needs: the whole generated text, the gold answer, the options if any."""

    text: str
    gold: str
    choices: tuple[str, ...] | None = None


def _grade_with(pool: WorkerPool, item: GradeItem, policy: str, timeout_s: float) -> Grade:
    choices = list(item.choices) if item.choices else None
    with pool.lease() as worker:
        status, value = worker.call("judge", item.text, item.gold, choices, policy, timeout=timeout_s)
        mv_status, mv_value = worker.call("math_verify", item.text, item.gold, choices, timeout=timeout_s)
    if status == "ok":
        pred, correct, reason = value
    else:
        pred = "" if choices else predicted_answer(item.text, item.gold, policy)
        correct, reason = False, "timeout" if status == "timeout" else f"error: {value}"
    return Grade(pred, bool(correct), mv_status == "ok" and bool(mv_value), reason)


def grade(text: str, gold: str, choices: Sequence[str] | None = None, *, policy: str = "strict",
          timeout_s: float = 3.0) -> Grade:
    """Both graders' verdicts on one solution `text` against `gold` (an option letter where
    `choices` is given). Each grader gets `timeout_s` seconds; past it, the verdict is False."""
    check_policy(policy)
    item = GradeItem(text, str(gold), tuple(choices) if choices else None)
    return _grade_with(shared_pool(), item, policy, timeout_s)


def grade_all(items: Iterable[GradeItem], *, policy: str = "strict", timeout_s: float = 3.0, workers: int = 0,
              progress: bool = True, desc: str = "grade") -> list[Grade]:
    """Grade every item, in order, on `workers` processes (0: one per core), with a progress bar."""
    from tqdm import tqdm

    check_policy(policy)
    items = list(items)
    size = workers if workers > 0 else (os.cpu_count() or 1)
    size = max(1, min(size, len(items)))
    with WorkerPool(size) as pool, concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="jz3-grade") as ex:
        futures = [ex.submit(_grade_with, pool, item, policy, timeout_s) for item in items]
        bar = tqdm(total=len(futures), desc=desc, unit="item", disable=not progress or not futures, mininterval=1.0)
        for future in concurrent.futures.as_completed(futures):
            future.result()
            bar.update(1)
        bar.close()
        return [f.result() for f in futures]


def agreement(grades: Sequence[Grade]) -> float:
    """The fraction of items on which our verdict and math-verify's agree (1.0 for no items)."""
    if not grades:
        return 1.0
    return round(sum(g.correct == g.correct_math_verify for g in grades) / len(grades), 6)
