"""The `filter` stage (jz3_jax.synth): parse, drop truncated/malformed, decontaminate, deduplicate.

The stage is called directly (`run(cfg, ctx)`) with a hand-made StageContext. Decontamination is
tested against a tiny evaluation directory written in tmp_path, and against the real GSM8K and
MATH-500 test sets in ../shared (those tests skip when it is absent).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from jz3_jax.errors import UserError
from jz3_jax.stages.registry import StageContext
from jz3_jax.runtime.paths import atomic_write
from jz3_jax.synth.dedup import lsh_params
from jz3_jax.synth.config import FilterConfig
from jz3_jax.synth.spec import FilterSpec
from jz3_jax.synth.filter_stage import run
from jz3_jax.synth.parse import Malformed, Parsed, has_boxed, parse_completion
from jz3_jax.synth.text import normalize, words

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"

# Hand-written problems of 60-70 words (a single changed number is a near duplicate at these lengths).
BAKERY = ("A bakery sells muffins in boxes of 6 and cookies in boxes of 12. On Monday the bakery sold 35 boxes of "
          "muffins and 18 boxes of cookies. On Tuesday it sold twice as many boxes of muffins as on Monday but only "
          "half as many boxes of cookies. Each muffin costs 2 dollars and each cookie costs 1 dollar. How much money "
          "did the bakery take in over the two days?")
TRAINS = ("Two trains leave stations that are 420 kilometres apart at the same moment and travel toward each other "
          "on parallel tracks. The first train moves at a constant speed of 80 kilometres per hour, while the second "
          "train starts at 60 kilometres per hour and speeds up to 70 kilometres per hour after the first hour. After "
          "how many hours will the two trains pass each other?")
GARDEN = ("A rectangular garden is 24 metres long and 15 metres wide. A gravel path of uniform width runs around the "
          "outside of the garden, and the total area covered by the garden and the path together is 598 square "
          "metres. The owner wants to plant flowers along the outer edge of the path. What is the width of the path, "
          "and how long is its outer edge?")
MARBLES = ("A bag contains 5 red marbles, 7 blue marbles and 8 green marbles. Three marbles are drawn one after "
           "another without replacement. What is the probability that the first marble is red, the second is blue "
           "and the third is green? Express the answer as a common fraction in lowest terms, and explain why the "
           "order of the draws matters in this calculation.")
SOLUTION = "Work through the quantities step by step.\nThe answer is $\\boxed{42}$."
TOOL_SOLUTION = ("```python\ntotal = 6 * 35 * 2 + 12 * 18\nprint(total)\n```\n```output\n636\n```\n"
                 "So the bakery took in $\\boxed{636}$ dollars.")


def completion(problem: str, solution: str = SOLUTION, header: str = "## Solution") -> str:
    return f"## Problem\n{problem}\n\n{header}\n{solution}"


def row(rid, problem: str, solution: str = SOLUTION, *, kind: str = "cot", finish: str = "stop", **extra) -> dict:
    header = "## Code Solution" if kind == "tool" else "## Solution"
    return {"id": rid, "prompt": "p", "completion": completion(problem, solution, header), "finish_reason": finish,
            "kind": kind, **extra}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_filter(tmp_path: Path, rows: list | None = None, **filter_kwargs) -> tuple[dict, list[dict], list[dict]]:
    """Run the stage on `rows` (written to tmp_path/in/shard-0.jsonl unless `inputs` is given)."""
    if rows is not None:
        filter_kwargs.setdefault("inputs", str(write_jsonl(tmp_path / "in" / "shard-0.jsonl", rows)))
    filter_kwargs.setdefault("decontaminate", False)
    stage_dir = tmp_path / "run" / "filter"
    ctx = StageContext("filter", stage_dir, logging.getLogger("jz3_jax.test_filter"))
    report = run(FilterSpec(FilterConfig(**filter_kwargs)), ctx)
    assert json.loads((stage_dir / "report.json").read_text()) == report
    return report, read_jsonl(stage_dir / "records.jsonl"), read_jsonl(stage_dir / "removed.jsonl")


# --- parsing ------------------------------------------------------------------------------------


def test_parse_lenient_headers_and_boundaries():
    assert parse_completion("## Problem\nWhat is 2+3?\n\n## Solution\nIt is 5.") == Parsed("What is 2+3?", "It is 5.")
    assert parse_completion("  ###PROBLEM:  \n  What is 2+3?\n#  solution \nIt is 5.\n") == Parsed("What is 2+3?", "It is 5.")
    assert parse_completion("# question\nQ?\n## Code Solution\nA.") == Parsed("Q?", "A.")
    # The prompt ended with the problem header: the completion starts with the problem itself.
    assert parse_completion("What is 2+3?\n## Solution\n5") == Parsed("What is 2+3?", "5")
    # A preamble before the problem header and a second problem after the solution are dropped.
    text = "Sure! Here is one.\n## Problem\nP1\n## Solution\n### Step 1\nS1\n## Problem\nP2\n## Solution\nS2"
    assert parse_completion(text) == Parsed("P1", "### Step 1\nS1")
    # A header must be a line of its own: "Solution" inside a sentence is not one.
    assert parse_completion("## Problem\nFind the ## solution here") == Malformed("no_solution_header")
    assert parse_completion("## Problem\n\n## Solution\nS") == Malformed("empty_problem")
    assert parse_completion("## Problem\nP\n## Solution\n  \n") == Malformed("empty_solution")


def test_parse_tool_rules():
    good = "```python\nx = 2 + 3\nprint(x)\n```\n```output\n5\n```\nThe answer is \\boxed{5}."
    assert parse_completion(f"## Problem\nP\n## Code Solution\n{good}", "tool") == Parsed("P", good)
    assert parse_completion("## Problem\nP\n## Solution\nx = 5, so \\boxed{5}", "tool") == Malformed("no_code_block")
    unclosed = "## Problem\nP\n## Solution\n```python\nx = 5\n\\boxed{5}"
    assert parse_completion(unclosed, "tool") == Malformed("no_code_block")
    broken = "## Problem\nP\n## Solution\n```python\nx = (5\n```\n\\boxed{5}"
    assert parse_completion(broken, "tool") == Malformed("code_syntax_error")
    in_code_only = "## Problem\nP\n## Solution\n```py\nprint('\\\\boxed{5}')\n```\nDone."
    assert parse_completion(in_code_only, "tool") == Malformed("no_boxed_answer")
    # The same text is fine as a CoT record, which needs no code and no boxed answer.
    assert isinstance(parse_completion(in_code_only, "cot"), Parsed)
    assert has_boxed(r"so $\boxed{\frac{1}{2}}$") and has_boxed(r"\boxed {x}")
    assert not has_boxed(r"\boxed{ }") and not has_boxed(r"\boxed{\frac{1}{2}") and not has_boxed("boxed{3}")


def test_normalisation_is_the_same_on_both_sides():
    assert normalize("Janet\u2019s  ducks\tlay 16 EGGS.") == normalize("janet's ducks lay 16 eggs") == "janet s ducks lay 16 eggs"
    assert words("f(x)=x^2+3x, $\\frac{1}{2}$") == ["f", "x", "x", "2", "3x", "frac", "1", "2"]


# --- output format, counts ----------------------------------------------------------------------


def test_records_have_the_exact_training_format(tmp_path):
    rows = [row("a", BAKERY, meta={"snippet": "s1", "level": "grade_school"}),
            row("b", TRAINS, TOOL_SOLUTION, kind="tool")]
    report, records, removed = run_filter(tmp_path, rows)
    assert records == [
        {"input": f"## Question\n{BAKERY}\n\n## Solution\n", "output": SOLUTION, "id": "a", "kind": "cot",
         "source_hash": hashlib.sha256(rows[0]["completion"].encode()).hexdigest(),
         "meta": {"snippet": "s1", "level": "grade_school"}},
        {"input": f"## Question\n{TRAINS}\n\n## Code Solution\n", "output": TOOL_SOLUTION, "id": "b", "kind": "tool",
         "source_hash": hashlib.sha256(rows[1]["completion"].encode()).hexdigest()},
    ]
    assert removed == [] and report["read"] == report["kept"] == 2


def test_truncated_and_malformed_are_counted(tmp_path):
    rows = [
        row(1, BAKERY),
        row(2, TRAINS, finish="length"),  # well-formed but cut: truncated wins
        {"id": 3, "completion": "## Problem\nno solution header at all", "finish_reason": "length"},
        {"id": 4, "completion": "## Problem\nP without a solution", "finish_reason": "stop"},
        {"id": 5, "completion": "## Problem\n\n## Solution\nS", "finish_reason": "stop"},
        row(6, GARDEN, "No code here, just \\boxed{7}.", kind="tool"),
        row(7, MARBLES, "```python\nprint(1)\n```\nno boxed answer", kind="tool"),
        "",  # blank lines are skipped, not counted
        row(8, MARBLES, TOOL_SOLUTION, kind="tool"),
    ]
    report, records, removed = run_filter(tmp_path, rows)
    assert report["read"] == 8 and report["kept"] == 2
    assert [r["id"] for r in records] == [1, 8]
    assert report["removed"] == {"truncated": 2, "malformed": 4, "contaminated": 0, "exact_duplicate": 0,
                                 "near_duplicate": 0}
    assert report["malformed_by_reason"] == {"no_solution_header": 1, "empty_problem": 1, "empty_solution": 0,
                                             "no_code_block": 1, "code_syntax_error": 0, "no_boxed_answer": 1}
    assert report["by_kind"] == {"cot": {"read": 5, "kept": 1}, "tool": {"read": 3, "kept": 1}}
    assert [(r["id"], r["reason"], r.get("detail")) for r in removed] == [
        (2, "truncated", None), (3, "truncated", None), (4, "malformed", "no_solution_header"),
        (5, "malformed", "empty_problem"), (6, "malformed", "no_code_block"), (7, "malformed", "no_boxed_answer")]


# --- deduplication ------------------------------------------------------------------------------


def test_exact_and_near_duplicates_are_removed_first_kept(tmp_path):
    bakery_36 = BAKERY.replace("sold 35 boxes", "sold 36 boxes")
    assert bakery_36 != BAKERY
    rows = [
        row("b1", BAKERY),
        row("t1", TRAINS),
        row("b2", BAKERY, "A different solution, \\boxed{1}."),  # same problem: exact duplicate
        row("b3", "  " + BAKERY.upper().replace(" ", " \n ") + "  "),  # case/whitespace only: still exact
        row("b4", bakery_36),  # one number changed: near duplicate
        row("g1", GARDEN),
        row("m1", MARBLES),
        row("bt", BAKERY, TOOL_SOLUTION, kind="tool"),  # same problem, other kind: kept (dedup is per kind)
    ]
    report, records, removed = run_filter(tmp_path, rows)
    assert [r["id"] for r in records] == ["b1", "t1", "g1", "m1", "bt"]
    assert report["removed"]["exact_duplicate"] == 2 and report["removed"]["near_duplicate"] == 1
    by_id = {r["id"]: r for r in removed}
    assert by_id["b2"]["duplicate_of"] == by_id["b3"]["duplicate_of"] == by_id["b4"]["duplicate_of"] == "b1"
    assert by_id["b4"]["reason"] == "near_duplicate" and 0.8 <= by_id["b4"]["jaccard"] < 1.0


def test_near_duplicate_threshold(tmp_path):
    one_changed = BAKERY.replace("18 boxes", "19 boxes")
    # Several numbers and words changed: Jaccard well below 0.8, kept.
    many = BAKERY.replace("35", "40").replace("18", "20").replace("twice", "three times").replace("half", "a third")
    rows = [row("b", BAKERY), row("t", TRAINS), row("g", GARDEN), row("m", MARBLES), row("x", one_changed),
            row("y", many)]
    report, records, removed = run_filter(tmp_path, rows)
    assert [r["id"] for r in records] == ["b", "t", "g", "m", "y"]
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in removed] == [("x", "near_duplicate", "b")]
    assert 0.8 < removed[0]["jaccard"] < 1.0
    # A stricter threshold keeps the one-number variant.
    _, records, removed = run_filter(tmp_path, rows, near_dup_threshold=0.95)
    assert len(records) == 6 and removed == []
    bands, rows_per_band = lsh_params(0.8, 128)
    assert bands * rows_per_band <= 128 and 1 - (1 - 0.8**rows_per_band) ** bands >= 0.995


# --- decontamination ----------------------------------------------------------------------------

TOY_QUESTION = ("Maria buys 3 notebooks for 4 dollars each and a backpack that costs 5 times as much as one "
                "notebook. How much does she spend in total?")
TOY_PROBLEM = "Find the number of ordered pairs of positive integers $(a,b)$ such that $a+b=30$ and $\\gcd(a,b)=3$."


def write_toy_eval(root: Path) -> Path:
    write_jsonl(root / "toy_gsm" / "test.jsonl", [
        {"question": TOY_QUESTION, "answer": "32"},
        {"question": "A farmer has 17 sheep and all but 9 run away. How many sheep are left on the farm?"}])
    write_jsonl(root / "toy_math" / "test.jsonl", [{"problem": TOY_PROBLEM, "solution": "..."}])
    write_jsonl(root / "toy_short" / "test.jsonl", [{"input": "Compute $\\dbinom{10}{3}$."}])
    # Body and Question are each under 13 words: only their join (Body first) has 13-grams.
    write_jsonl(root / "toy_svamp" / "test.jsonl", [
        {"Body": "Paco had 26 salty cookies and 17 sweet cookies.", "Question": "How many more salty than sweet did he have left?"}])
    (root / "notes.jsonl").write_text("not an evaluation set\n")
    return root


def test_decontamination_with_a_tiny_eval_dir(tmp_path):
    eval_dir = write_toy_eval(tmp_path / "eval")
    twelve_shared = ("Maria buys 3 notebooks for 4 dollars each and a backpack that is on sale for 10 dollars. "
                     "What is her change from 50 dollars?")
    rows = [
        row("gsm", "  MARIA buys 3 NOTEBOOKS for 4 dollars each, and a backpack that costs 5 times\n\nas much as "
                   "one notebook -- how much does she spend in total"),
        row("math", "Consider this. " + TOY_PROBLEM.upper() + " Show every step of your reasoning."),
        row("short", "compute  $\\dbinom{10}{3}$"),
        row("svamp", "Paco had 26 salty cookies and 17 sweet cookies. How many more salty than sweet did he have left?"),
        row("in_solution", GARDEN, "Recall a similar exercise: " + TOY_QUESTION + " Here \\boxed{9}."),
        row("twelve", twelve_shared),
        row("unrelated", TRAINS),
        row("unrelated2", MARBLES),
    ]
    report, records, removed = run_filter(tmp_path, rows, decontaminate=True, eval_dir=str(eval_dir))
    assert [r["id"] for r in records] == ["twelve", "unrelated", "unrelated2"]
    assert {r["id"]: r["set"] for r in removed} == {"gsm": "toy_gsm", "math": "toy_math", "short": "toy_short",
                                                    "svamp": "toy_svamp", "in_solution": "toy_gsm"}
    assert report["removed"]["contaminated"] == 5
    assert report["contaminated_by_set"] == {"toy_gsm": 2, "toy_math": 1, "toy_short": 1, "toy_svamp": 1}
    assert sorted(report["eval_sets"]["sets"]) == ["toy_gsm", "toy_math", "toy_short", "toy_svamp"]
    assert report["eval_sets"]["sets"]["toy_short"]["short_questions"] == 1
    # The n-gram length is what decides: 12 shared words are contaminated under ngram=12.
    report12, records12, _ = run_filter(tmp_path, rows, decontaminate=True, eval_dir=str(eval_dir), ngram=12)
    assert "twelve" not in [r["id"] for r in records12] and report12["removed"]["contaminated"] == 6


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_EVAL / "gsm8k" / "test.jsonl").is_file(), reason="../shared eval sets not present")
def test_decontamination_against_real_gsm8k_and_math(tmp_path):
    gsm = json.loads((SHARED_EVAL / "gsm8k" / "test.jsonl").open().readline())["question"]
    math_problems = [json.loads(line)["problem"] for line in (SHARED_EVAL / "math_oai" / "test.jsonl").open()]
    math = next(p for p in math_problems if len(words(p)) >= 25)
    rows = [
        row("gsm", "\n " + gsm.upper().replace(" ", "   ") + " \n"),
        row("math", math.lower().replace(" ", "\n")),
        row("bakery", BAKERY), row("trains", TRAINS), row("garden", GARDEN), row("marbles", MARBLES),
    ]
    report, records, removed = run_filter(tmp_path, rows, decontaminate=True, eval_dir=str(SHARED_EVAL))
    assert [r["id"] for r in records] == ["bakery", "trains", "garden", "marbles"]
    assert {r["id"]: r["set"] for r in removed} == {"gsm": "gsm8k", "math": "math_oai"}
    assert report["contaminated_by_set"] == {"gsm8k": 1, "math_oai": 1}
    assert {"gsm8k", "math_oai", "mmlu_stem", "svamp"} <= set(report["eval_sets"]["sets"])


# --- restarts, atomic outputs, errors -----------------------------------------------------------


def test_rerun_gives_identical_outputs_and_failures_leave_them_intact(tmp_path):
    rows = [row(1, BAKERY), row(2, BAKERY), row(3, TRAINS, finish="length"), row(4, GARDEN),
            row(5, MARBLES, TOOL_SOLUTION, kind="tool")]
    stage_dir = tmp_path / "run" / "filter"
    report1, _, _ = run_filter(tmp_path, rows)
    first = {name: (stage_dir / name).read_bytes() for name in ("records.jsonl", "removed.jsonl")}
    report2, _, _ = run_filter(tmp_path, rows)
    assert {name: (stage_dir / name).read_bytes() for name in first} == first
    timing = ("seconds", "records_per_second", "phase_seconds", "peak_rss_mb")
    assert {k: v for k, v in report1.items() if k not in timing} == {k: v for k, v in report2.items() if k not in timing}
    assert report1["outputs"]["records.jsonl"] == {
        "rows": 3, "sha256": hashlib.sha256(first["records.jsonl"]).hexdigest()}
    assert sorted(p.name for p in stage_dir.iterdir()) == ["records.jsonl", "removed.jsonl", "report.json"]

    # A bad line in a later shard fails the run after records were already being written: the
    # previous outputs stay whole and no temp file is left behind.
    write_jsonl(tmp_path / "in" / "shard-1.jsonl", [row(9, TRAINS), "{not json"])
    report_before = (stage_dir / "report.json").read_bytes()
    with pytest.raises(UserError, match=r"shard-1\.jsonl:2"):
        run_filter(tmp_path, None, inputs=str(tmp_path / "in"))
    assert {name: (stage_dir / name).read_bytes() for name in first} == first
    assert (stage_dir / "report.json").read_bytes() == report_before
    assert sorted(p.name for p in stage_dir.iterdir()) == ["records.jsonl", "removed.jsonl", "report.json"]


def test_atomic_write_keeps_old_content_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]
    with atomic_write(target) as f:
        f.write("new\n")
    assert target.read_text() == "new\n" and list(tmp_path.iterdir()) == [target]


def test_default_inputs_are_the_synthesize_shards(tmp_path):
    synth = tmp_path / "run" / "synthesize"
    write_jsonl(synth / "completions" / "shard-00001.jsonl", [row("late", TRAINS)])
    write_jsonl(synth / "completions" / "shard-00000.jsonl", [row("early", BAKERY)])
    write_jsonl(synth / "metrics.jsonl", [{"step": 1}])  # the synthesize stage's own metrics: not an input
    report, records, _ = run_filter(tmp_path, None, inputs="")
    assert [r["id"] for r in records] == ["early", "late"]
    assert [Path(p).name for p in report["inputs"]] == ["shard-00000.jsonl", "shard-00001.jsonl"]


@pytest.mark.parametrize("rows, message", [
    (["{\"id\": 1, \"completion\": \"x\""], r"shard-0\.jsonl:1: not valid JSON"),
    (["[1, 2]"], r"shard-0\.jsonl:1: expected a JSON object"),
    ([{"id": 1, "finish_reason": "stop"}], r"shard-0\.jsonl:1: field 'completion'"),
    ([row(1, BAKERY), {"id": 2, "completion": "c", "finish_reason": "eos"}], r"shard-0\.jsonl:2: field 'finish_reason'"),
    ([{"id": 1, "completion": "c", "finish_reason": "stop", "kind": "proof"}], r"field 'kind'"),
    ([{"completion": "c", "finish_reason": "stop"}], r"field 'id'"),
])
def test_bad_completion_lines_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(UserError, match=message):
        run_filter(tmp_path, rows)


def test_missing_inputs_and_eval_dir_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"no completion files: .*nowhere"):
        run_filter(tmp_path, None, inputs=str(tmp_path / "nowhere" / "*.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no completion files: directory .*empty"):
        run_filter(tmp_path, None, inputs=str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"no completion files: .*synthesize"):
        run_filter(tmp_path, None, inputs="")  # the default: RUN_DIR/synthesize/completions/*.jsonl
    rows = [row(1, BAKERY)]
    with pytest.raises(UserError, match=r"filter\.eval_dir is empty"):
        run_filter(tmp_path, rows, decontaminate=True, eval_dir="")
    with pytest.raises(UserError, match=r"is not a directory"):
        run_filter(tmp_path, rows, decontaminate=True, eval_dir=str(tmp_path / "no_eval"))
    with pytest.raises(UserError, match=r"has no NAME/test\.jsonl"):
        run_filter(tmp_path, rows, decontaminate=True, eval_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"filter\.near_dup_threshold"):
        run_filter(tmp_path, rows, near_dup_threshold=1.5)
    assert not (tmp_path / "run" / "filter" / "records.jsonl").exists()
