"""Answer extraction, equivalence under both policies, math-verify, and the grading workers.

The labelled third-party-style suite (hundreds of cases) is in test_grading_suite.py; these tests
pin the mechanisms: where an answer is read, which comparisons decide, timeouts and parallelism.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from jz3_jax.eval.grader import paper
from jz3_jax.eval.grader.extract import extract
from jz3_jax.eval.grader.latex import last_boxed, split_top_level
from jz3_jax.eval.grader.policies import judge
from jz3_jax.eval.grader.worker import TimeoutWorker
from jz3_jax.eval.grading import GradeItem, agreement, grade, grade_all

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
needs_shared = pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="../shared/data/eval is absent")


def strict(pred: str, gold: str) -> bool:
    return judge(pred, gold, None, "strict")[1]


def test_last_boxed_matches_braces_and_takes_the_outermost():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{a}{b+\sqrt{2}}} done") == r"\frac{a}{b+\sqrt{2}}"
    assert last_boxed(r"\boxed 7.") == "7."
    assert last_boxed(r"\boxed{\boxed{3}}") == r"\boxed{3}"
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed{unclosed {") is None


def test_top_level_split_ignores_commas_inside_brackets():
    assert split_top_level(r"(1,2), \{3,4\}, \frac{5,6}{7}", ",") == ["(1,2)", r" \{3,4\}", r" \frac{5,6}{7}"]


@pytest.mark.parametrize("text, answer, how", [
    ("1 000", "1 000", "bare"),
    (r"$\frac13$", r"\frac13", "bare"),
    ("Final Answer: The final answer is 14400. I hope it is correct.", "14400", "final_answer"),
    (r"Final Answer: The final answer is $\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}", "final_answer"),
    ("The answer is 5. This follows from 2 + 3 = 5 and 7 > 2.", "5", "the_answer_is"),
    ("so the answer is 3.5.", "3.5", "the_answer_is"),
    (r"the answer is $\frac{7}{2}$, since 7 is odd", r"\frac{7}{2}", "the_answer_is"),
    ("Thus the answer is 12, since 3 times 4 is 12.", "12", "the_answer_is"),
    (r"We get \boxed{12} apples. Later we find \boxed{13}.", "13", "boxed"),
    ("She pays 3 + 4 = 7 dollars.\n#### 7", "7", "hashes"),
    ("Adding: 3 + 4 = 7.\n\n**Answer: 7**", "7", "answer_line"),
    ("We add 3 and 4 to get 9 then subtract 2.\n\nSo she has **7** apples.", "7", "bold"),
    ("We compute 2 + 2 = 4 and 4 + 1 = 5.\nTherefore the total is $17$.", "17", "last_math"),
    (r"Solving, we find that x \geq 5 is the solution", r"x \geq 5", "relation"),
    ("first 3 then 4.5 and finally -2/3 of it is left", "-2/3", "last_number"),
    ("nothing numeric", "", "none"),
])
def test_strict_extraction_reads_the_shapes_models_write(text, answer, how):
    found = extract(text)
    assert (found.answer, found.how) == (answer, how)


def test_several_boxed_answers_are_read_when_the_gold_has_several_parts():
    text = r"The roots are \boxed{2} and \boxed{5}."
    assert judge(text, "2, 5", None, "strict")[:2] == ("2, 5", True)
    assert judge(text, "5", None, "strict")[:2] == ("5", True)  # one part: the last boxed answer
    assert not judge(text, "2, 7", None, "strict")[1]


def test_paper_extraction_keeps_the_harness_order():
    assert paper.extract_answer(r"We get \boxed{12} apples. The answer is 13") == "12"
    assert paper.extract_answer("1 000") == "000"  # the harness's last number: why strict exists
    assert paper.extract_answer("Adding them, the answer is 1,250 dollars.\n") == "1,250"


@pytest.mark.parametrize("gold, pred, equal", [
    ("123456", "123457", False), ("100", "99.99", False), ("5", "5.0", True),
    ("3.14", "3.1416", False), ("3.14", "3.1", False), ("0.5", "0.50", True), ("2.5", "2.6", False),
    (r"\frac{14}{3}", "4.6667", True), (r"\frac{14}{3}", "4.67", False), ("4.12", r"\sqrt{17}", True),
    (r"\frac{1}{3}", "0.3333", True), (r"\frac{1}{3}", "0.33", False), (r"\frac{1}{3}", "0.3334", False),
    ("0.25", "25", False), ("25", "0.25", False), (r"25\%", "0.25", True), ("0.25", r"25\%", True),
    ("1112112_3", "1112122_3", False), ("1011_2", "1011_{2}", True),
])
def test_strict_numbers_compare_at_the_precision_written(gold, pred, equal):
    assert strict(pred, gold) is equal


@pytest.mark.parametrize("gold, pred, equal", [
    ("123456", "123457", True), ("0.25", "25", True), ("25", "0.25", True), ("1", "1.0002", False),
])
def test_paper_policy_keeps_relative_1e4_and_the_percentage_variants(gold, pred, equal):
    assert judge(pred, gold, None, "paper")[1] is equal


@pytest.mark.parametrize("gold, pred, equal", [
    ("(3,2)", "(p,q)=(3,2)", True), ("2x + 3", "f(x) = 2x + 3", True), ("1, 2", "x = 1, y = 2", True),
    ("y = 2", "x = 2", False), ("y = 2", "y=2", True), ("(-793,10)", "-793<a<10", True),
    (r"[5,\infty)", r"x \geq 5", True), (r"[5,\infty)", "x > 5", False), ("(1,2)", "(1,2]", False),
    (r"(-\infty,3)\cup(5,\infty)", r"x<3 \text{ or } x>5", True), (r"\{1,2,3\}", r"\{3, 1, 2\}", True),
    ("(1,2)", "(2,1)", False), ("1, -2", "-2, 1", True), (r"\begin{pmatrix} 1/2 & 2 \end{pmatrix}",
                                                          r"\begin{bmatrix} 0.5 & 2 \end{bmatrix}", True),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{bmatrix} 1 \\ 3 \end{bmatrix}", False),
    (r"28\%", "28 percent", True), ("10", "10 weeks", True), ("5", r"5\text{ miles}", True),
    ("12.5", r"\$12.50", True), ("3.5", "3,5", True), ("1000000", "1 000 000", True), ("3", "2 * 1.5 = 3 bolts", True),
    ("1:00", "12:00", False), ("3", r"\pm 3", False), ("30", r"30^\circ", True),
    (r"\frac{5}{2}", r"2\frac{1}{2}", True), (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", True),
    ("(x+1)^2", "x^2+2x+1", True), ("x^2", "2x", False), (r"\text{even}", "even", True), ("odd", "even", False),
])
def test_strict_equivalence_by_shape(gold, pred, equal):
    assert strict(pred, gold) is equal


def test_multiple_choice_takes_the_chosen_option_not_the_last_letter():
    choices = ["21", "27", "29", "33"]
    text = "Option (A) is too small and (B) double counts. Therefore, the answer is D."
    assert grade(text, "D", choices).correct and not grade(text, "B", choices).correct
    assert grade(r"so \boxed{29}", "C", choices).correct  # the option's text
    assert grade(r"The final answer is $\text{(D)}$", "D", choices).correct
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
        assert worker.call("judge", "2", "2", None, "strict", timeout=30.0)[0] == "ok"  # started and warm
        start = time.monotonic()
        status, _ = worker.call("judge", "(x+1)^{4000}", "(x+2)^{4000}", None, "strict", timeout=0.5)
        assert status == "timeout"
        assert time.monotonic() - start < 0.5 + 2
        assert worker.call("judge", r"\boxed{2}", "2", None, "strict", timeout=30.0) == ("ok", ["2", True, "string"])
    finally:
        worker.close()


@pytest.mark.parametrize("policy", ["strict", "paper"])
def test_model_text_is_never_run_as_python(tmp_path, policy):
    marker = tmp_path / "ran"
    payload = f"__import__('pathlib').Path('{marker}').touch()"
    for text in (rf"\boxed{{{payload}}}", payload, f"The answer is {payload}."):
        assert not grade(text, "5", policy=policy).correct
    assert not marker.exists()


def test_a_runaway_expansion_is_cut_off_and_grading_goes_on():
    start = time.monotonic()
    runaway = grade(r"\boxed{10^{10^{10}}}", "5", timeout_s=2.0)
    assert not runaway.correct and (runaway.reason == "timeout" or runaway.reason.startswith("error"))
    assert time.monotonic() - start < 2 * 2.0 + 30  # both graders' timeouts and a worker restart
    assert grade(r"\boxed{5}", "5").correct


def test_grade_all_on_a_pool_equals_one_by_one():
    items = [GradeItem(r"so \boxed{\frac{1}{2}}", "0.5"), GradeItem("The answer is 7.", "8"),
             GradeItem("x = 3", "3"), GradeItem("The answer is (B)", "B", ("1", "2")),
             GradeItem(r"\boxed{(x+1)^2}", "x^2+2x+1")] * 3
    pooled = grade_all(items, workers=2, progress=False)
    assert pooled == [grade(i.text, i.gold, i.choices) for i in items]
    assert [g.correct for g in pooled[:5]] == [True, False, True, True, True]
    assert agreement(pooled) == 1.0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@needs_shared
@pytest.mark.parametrize("policy", ["strict", "paper"])
@pytest.mark.parametrize("name, text_field, gold_of", [
    ("gsm8k", "answer", lambda r: r["answer"].split("####")[-1].strip().replace(",", "")),
    ("math_oai", "solution", lambda r: r["answer"]),
])
def test_graders_on_the_datasets_own_worked_solutions(name, text_field, gold_of, policy):
    rows = _rows(SHARED_EVAL / name / "test.jsonl")
    items = [GradeItem(r[text_field], gold_of(r)) for r in rows]
    shifted = [GradeItem(r[text_field], gold_of(rows[(i + 1) % len(rows)])) for i, r in enumerate(rows)]
    grades = grade_all(items + shifted, policy=policy, progress=False)
    same, other, n = grades[:len(rows)], grades[len(rows):], len(rows)
    ours, mv = sum(g.correct for g in same) / n, sum(g.correct_math_verify for g in same) / n
    ours_x, mv_x = sum(g.correct for g in other) / n, sum(g.correct_math_verify for g in other) / n
    print(f"{name} ({policy}): own gold ours {ours:.4f} math-verify {mv:.4f}; "
          f"other gold ours {ours_x:.4f} math-verify {mv_x:.4f}")
    assert ours >= 0.99 and mv >= 0.99
    assert ours_x < 0.02 and mv_x < 0.02
