"""Answer extraction, normalisation and the two graders (ours and math-verify)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from jz3_jax.eval.extract import extract_answer, extract_choice, last_boxed, normalize_answer
from jz3_jax.eval.grading import answers_equal, grade
from jz3_jax.eval.symbolic import TimeoutWorker

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
needs_shared = pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="../shared/data/eval is absent")


def test_last_boxed_matches_braces():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{a}{b+\sqrt{2}}} done") == r"\frac{a}{b+\sqrt{2}}"
    assert last_boxed(r"\boxed 7.") == "7."
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed{unclosed {") is None


@pytest.mark.parametrize("text, answer", [
    (r"so the final answer is $\frac{3}{4}$. I hope", r"\frac{3}{4}"),
    (r"We get \boxed{12} apples. The answer is 13", "12"),
    ("Adding them, the answer is 1,250 dollars.\n", "1,250"),
    ("so the answer is 2 * 1.5 = 3 bolts.", "3"),
    ("She pays 3 + 4 = 7\n#### 7", "7"),
    ("first 3 then 4.5 and finally -2/3", "-2/3"),
    ("nothing numeric", ""),
])
def test_extraction_order(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("raw, norm", [
    (r"\dfrac{1}{2}", r"\frac{1}{2}"), (r"\frac12", r"\frac{1}{2}"), (r"\left( 3, \pi \right)", r"(3,\pi)"),
    (r"\text{(B)}", "(B)"), (r"90^\circ", "90"), (r"\$4.50", "4.5"), ("1,234,567", "1234567"), ("12.0", "12"),
    ("50\\%", "50"), ("7 cm", "7"), ("x = 5", "5"), ("3/4", r"\frac{3}{4}"),
])
def test_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def test_numeric_tolerance_is_relative_1e4():
    assert answers_equal("1.00009", "1")[0]
    assert not answers_equal("1.0002", "1")[0]
    assert answers_equal("0.25", r"\frac{1}{4}") == (True, "numeric")
    assert answers_equal("25", "0.25")[0]  # the percentage variants of the original harness
    assert not answers_equal("24", "25")[0]


def test_symbolic_equivalence_and_its_limits():
    assert answers_equal(r"2\sqrt{2}", r"\sqrt{8}") == (True, "symbolic")
    assert answers_equal(r"\frac{x^2-1}{x-1}", "x+1")[0]
    assert not answers_equal(r"x^2", "2x")[0]
    assert answers_equal("", "3") == (False, "empty")


def test_multiple_choice_letters_and_option_texts():
    assert extract_choice("Thus the answer is (C).", "ABCDE") == "C"
    assert grade(r"The final answer is $\text{(D)}$", "D", ["1", "2", "3", "4"]).correct
    assert grade(r"so \boxed{29}", "C", ["21", "27", "29", "33"]).correct  # the option's text
    wrong = grade("The answer is (A)", "B", ["x", "y"])
    assert not wrong.correct and not wrong.correct_math_verify and wrong.pred == "A"


def test_both_graders_work_off_the_main_thread():
    results = {}

    def work():
        results["g"] = grade(r"Therefore \boxed{\dfrac{\pi}{3}}.", r"\frac{\pi}{3}")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert results["g"].correct and results["g"].correct_math_verify


def test_a_runaway_comparison_times_out_and_the_worker_recovers():
    worker = TimeoutWorker()
    try:
        start = time.monotonic()
        status, _ = worker.call("sympy_equal", "(x+1)**4000", "(x+2)**4000", timeout=0.5)
        assert status == "timeout"
        assert time.monotonic() - start < 0.5 + 10  # the first call also waited for the worker's imports
        assert worker.call("sympy_equal", "2", "2", timeout=5.0) == ("ok", True)
    finally:
        worker.close()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@needs_shared
@pytest.mark.parametrize("name, text_field, gold_of", [
    ("gsm8k", "answer", lambda r: r["answer"].split("####")[-1].strip().replace(",", "")),
    ("math_oai", "solution", lambda r: r["answer"]),
])
def test_graders_on_the_datasets_own_worked_solutions(name, text_field, gold_of):
    rows = _rows(SHARED_EVAL / name / "test.jsonl")
    same = [grade(r[text_field], gold_of(r)) for r in rows]
    shifted = [grade(r[text_field], gold_of(rows[(i + 1) % len(rows)])) for i, r in enumerate(rows)]
    n = len(rows)
    ours, mv = sum(g.correct for g in same) / n, sum(g.correct_math_verify for g in same) / n
    ours_x, mv_x = sum(g.correct for g in shifted) / n, sum(g.correct_math_verify for g in shifted) / n
    print(f"{name}: own gold ours {ours:.4f} math-verify {mv:.4f}; other gold ours {ours_x:.4f} math-verify {mv_x:.4f}")
    assert ours >= 0.99 and mv >= 0.99
    assert ours_x < 0.02 and mv_x < 0.02
