"""One verdict per item under a grading policy.

- `strict` (default): `extract.extract` finds the answer, `equivalence.answers_equivalent` compares it.
- `paper`: the JiuZhang3.0 / math-evaluation-harness decisions (`paper.py`), percentage variants
  and relative 1e-4 included, so that a table can be set beside the paper's.

`judge` may run sympy: call it through `worker.py` (a killable child process) with a timeout.
`predicted_answer` is extraction only, cheap enough for the caller's process.
"""

from __future__ import annotations

from jz3_jax.eval.grader import paper
from jz3_jax.eval.grader.choice import LETTERS, gold_letter, paper_choice, strict_choice
from jz3_jax.eval.grader.equivalence import answers_equivalent
from jz3_jax.eval.grader.extract import extract
from jz3_jax.eval.grader.latex import boxed_spans, split_top_level
from jz3_jax.eval.grader.normalize import clean

POLICIES = ("strict", "paper")


def check_policy(policy: str) -> str:
    """`policy` when it is a known one; ValueError naming the choices otherwise."""
    if policy not in POLICIES:
        raise ValueError(f"unknown grading policy {policy!r}: choose one of {', '.join(POLICIES)}")
    return policy


def _gold_parts(gold: str) -> int:
    """How many comma-separated parts an answer has (outside brackets)."""
    return len([p for p in split_top_level(clean(gold).text, ",") if p.strip()])


def predicted_answer(text: str, gold: str, policy: str) -> str:
    """The answer `policy` reads in `text` (with every boxed part when the gold has several)."""
    if policy == "paper":
        return paper.extract_answer(text)
    found = extract(text)
    parts = _gold_parts(gold)
    if parts > 1 and len(found.parts) >= parts and _gold_parts(found.answer) < parts:
        return ", ".join(found.parts[-parts:])
    return found.answer


def judge(text: str, gold: str, choices: list[str] | None, policy: str) -> tuple[str, bool, str]:
    """(the answer read, correct?, the step that decided) for one solution `text`."""
    check_policy(policy)
    if choices:
        letter = (paper_choice if policy == "paper" else strict_choice)(text, list(choices))
        ok = bool(letter) and letter == gold_letter(gold)
        return letter, ok, "choice" if letter else "empty"
    if policy == "strict" and "\\boxed" in gold:  # a gold given as worked text: its boxed answers
        gold = ", ".join(c for _, _, c in boxed_spans(gold))
    pred = predicted_answer(text, gold, policy)
    if policy == "paper":
        ok, reason = paper.answers_equal(pred, gold)
    else:
        ok, reason = answers_equivalent(gold, pred)
    return pred, ok, reason


def math_verify_verdict(text: str, gold: str, choices: list[str] | None) -> bool:
    """math-verify's verdict on the whole text (gold first, as its API expects); for multiple
    choice, the strict option letter (math-verify has no notion of options)."""
    if choices:
        return strict_choice(text, list(choices)) == gold_letter(gold)
    from math_verify import parse, verify

    gold_text = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    gold_parsed = parse(gold_text, parsing_timeout=None)
    pred_parsed = parse(text[-4000:], parsing_timeout=None)
    return bool(gold_parsed) and bool(pred_parsed) and bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


__all__ = ["LETTERS", "POLICIES", "check_policy", "judge", "math_verify_verdict", "predicted_answer"]
