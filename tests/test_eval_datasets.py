"""The dataset registry, prompts and bad input of the eval package."""

from __future__ import annotations

from pathlib import Path

import pytest

from jz3_jax.eval.datasets import DATASETS, dataset_file, load_problems
from jz3_jax.errors import EvalError
from jz3_jax.eval.prompts import build_prompt, demonstrations

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
needs_shared = pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="../shared/data/eval is absent")
ROWS = {"gsm8k": 1319, "math": 500, "math_oai": 500, "svamp": 1000, "asdiv": 2215, "mawps": 2065, "carp_en": 976,
        "tabmwp": 1000, "aqua": 254, "sat_math": 32, "mmlu_stem": 3018, "gsm_hard": 1319, "minerva_math": 272}


def test_registry_names_the_papers_benchmarks_and_the_mini_set():
    assert set(ROWS) | {"jz3_mini"} == set(DATASETS)
    assert {n for n, s in DATASETS.items() if s.shots == 5} == {"aqua", "sat_math", "mmlu_stem"}


def test_jz3_mini_ships_with_the_package():
    problems = load_problems("jz3_mini")
    assert len(problems) == 20 and len({p.id for p in problems}) == 20
    assert all(p.question and p.gold for p in problems)
    assert [p.gold for p in problems if p.choices] == ["C", "B"]
    assert load_problems("jz3_mini", limit=3)[-1].id == "mini-03"


@needs_shared
@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_public_test_file_reads_in_its_own_layout(name):
    problems = load_problems(name, str(SHARED_EVAL))
    assert len(problems) == ROWS[name]
    assert len({p.id for p in problems}) == len(problems)  # ids key resumption
    assert all(p.question.strip() and p.gold.strip() for p in problems), name
    if DATASETS[name].multiple_choice:
        assert all(p.choices and p.gold in "ABCDEFGHIJ"[: len(p.choices)] for p in problems)


@needs_shared
def test_gold_answers_in_each_layout():
    first = {n: load_problems(n, str(SHARED_EVAL), limit=1)[0] for n in ("gsm8k", "svamp", "asdiv", "aqua", "sat_math",
                                                                          "mmlu_stem")}
    assert first["gsm8k"].gold == "18"
    assert first["svamp"].gold == "145"
    assert first["asdiv"].gold == "9"  # "9 (apples)"
    assert first["aqua"].choices[0] == "5(√3 + 1)" and first["aqua"].gold == "A"
    assert first["sat_math"].choices == ("$f(-6)=0$", "$f(6)=-6$", "$f(-6)=6$", "$f(0)=-6$")
    assert first["mmlu_stem"].gold == "C"


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(EvalError, match="unknown dataset 'gsm9k'; known datasets: gsm8k, math, math_oai"):
        load_problems("gsm9k", "/nowhere")


def test_missing_data_directory_names_the_expected_files(tmp_path):
    with pytest.raises(EvalError, match=r"expected .*nowhere/gsm8k/test.jsonl .*question, answer.* does not exist"):
        dataset_file("gsm8k", str(tmp_path / "nowhere"))
    with pytest.raises(EvalError, match="needs eval.data_dir"):
        dataset_file("svamp", "")
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(EvalError, match=r"test.jsonl:2: not a gsm8k row"):
        load_problems("gsm8k", str(tmp_path))


def test_prompts_follow_the_papers_format():
    p = load_problems("jz3_mini", limit=1)[0]
    assert build_prompt(p, "cot", 0) == f"## Question\n{p.question}\n\n## Solution\n"
    assert build_prompt(p, "tool", 0) == f"## Question\n{p.question}\n\n## Code Solution\n"
    mc = [q for q in load_problems("jz3_mini") if q.choices][0]
    assert build_prompt(mc, "cot", 0).startswith(f"## Question\n{mc.question}\nAnswer Choices: (A) 21 (B) 27 (C) 29")
    five = demonstrations("tool", 5)
    assert five.count("## Question") == 5 and five.count("```python") == 5 and five.endswith("\n\n---\n\n")
    assert build_prompt(p, "cot", 5).startswith(demonstrations("cot", 5))
