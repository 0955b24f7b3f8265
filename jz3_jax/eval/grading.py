"""The two graders: ours (strings, numbers within relative 1e-4, sympy) and math-verify.

`grade(prediction_text, gold, choices)` returns both verdicts for one item. Multiple-choice items
(with `choices`) compare option letters (a prediction naming an option's text counts as that
letter) for both graders. Slow checks run in `symbolic.worker()` with a per-item timeout, so
grading works on any thread.
"""

from __future__ import annotations

import dataclasses
import math
import re

from jz3_jax.eval.extract import extract_answer, extract_choice, normalize_answer
from jz3_jax.eval.symbolic import worker

LETTERS = "ABCDEFGHIJ"
REL_TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Grade:
    """One item's verdicts: the extracted prediction, ours, math-verify's, and why ours decided."""

    pred: str
    correct: bool
    correct_math_verify: bool
    reason: str


def to_number(s: str) -> float | None:
    """`s` as a number when it is one: integers, decimals, a/b, \\frac{a}{b}, a trailing percent."""
    t = normalize_answer(s)
    match = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", t)
    try:
        if match:
            value = float(match.group(2)) / float(match.group(3))
            return -value if match.group(1) else value
        return float(t)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)


def _numeric_equal(pred: str, gold: str, percent_variants: bool) -> bool | None:
    p, g = to_number(pred), to_number(gold)
    if p is None or g is None:
        return None
    candidates = [g, g / 100, g * 100] if percent_variants else [g]
    return any(numbers_close(p, c) for c in candidates)


def answers_equal(pred: str, gold: str, *, timeout_s: float = 3.0) -> tuple[bool, str]:
    """Our equivalence of two answer strings and the step that decided ("string", "numeric",
    "symbolic", "different", "timeout", "empty")."""
    if not pred.strip():
        return False, "empty"
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p == g or p.lower() == g.lower():
        return True, "string"
    numeric = _numeric_equal(pred, gold, percent_variants=True)
    if numeric is not None:
        return numeric, "numeric"
    if len(p) > 400 or len(g) > 400:
        return False, "different"
    status, value = worker().call("sympy_equal", p, g, timeout=timeout_s)
    if status == "timeout":
        return False, "timeout"
    if status == "ok" and value:
        return True, "symbolic"
    return False, "different"


def choice_letter(text: str, choices: list[str]) -> str:
    """The option letter a solution picks; an answer equal to an option's text counts as its letter."""
    letters = LETTERS[: len(choices)]
    letter = extract_choice(text, letters)
    if letter:
        return letter
    answer = normalize_answer(extract_answer(text))
    for i, choice in enumerate(choices):
        if answer and answer == normalize_answer(choice):
            return letters[i]
    return ""


def math_verify_equal(text: str, gold: str, *, timeout_s: float = 3.0) -> bool:
    """math-verify's verdict on a whole solution text against the gold answer (gold first)."""
    gold_text = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    status, value = worker().call("math_verify", gold_text, text[-4000:], timeout=timeout_s)
    return bool(status == "ok" and value["correct"])


def grade(text: str, gold: str, choices: list[str] | None = None, *, timeout_s: float = 3.0) -> Grade:
    """Both graders' verdicts on one solution `text` against `gold` (an option letter where
    `choices` is given)."""
    if choices:
        letter = choice_letter(text, choices)
        ok = bool(letter) and letter == gold.strip().upper()
        return Grade(letter, ok, ok, "choice" if letter else "empty")
    pred = extract_answer(text)
    ok, reason = answers_equal(pred, gold, timeout_s=timeout_s)
    return Grade(pred, ok, math_verify_equal(text, gold, timeout_s=timeout_s), reason)
