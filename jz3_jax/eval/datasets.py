"""Evaluation sets: a registry of readers for the public test files in their original layouts.

`load_problems(name, data_dir)` reads `data_dir/<file>` for one dataset (see `DATASETS` for the
expected files and fields, matching `../shared/data/eval/MANIFEST.json`) into `Problem`s: a question
text, a gold answer (an option letter for multiple choice) and the options. `jz3_mini` ships inside
the package (`data/jz3_mini.jsonl`), so evaluation runs where no benchmark file exists.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Callable

from jz3_jax.errors import EvalError
from jz3_jax.eval.grader.latex import last_boxed

PACKAGE_DATA = Path(__file__).with_name("data")
LETTERS = "ABCDEFGHIJ"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One evaluation item. `gold` is an option letter when `choices` is set."""

    dataset: str
    id: str
    question: str
    gold: str
    choices: tuple[str, ...] | None = None


def _number(value) -> str:
    """Gold numbers as written by a person: 145.0 -> "145", 0.5 -> "0.5"."""
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(f)


def _gsm8k(row, i):
    return row["question"], row["answer"].split("####")[-1].strip().replace(",", ""), None, row.get("idx", i)


def _math(row, i):
    gold = row.get("answer") or last_boxed(row["solution"]) or ""
    return row["problem"], gold, None, row.get("unique_id", row.get("idx", i))


def _minerva(row, i):
    return row["problem"], last_boxed(row["solution"]) or "", None, row.get("idx", i)


def _svamp(row, i):
    body, question = row["Body"].strip(), row["Question"].strip()
    sep = " " if body.endswith(".") else ". "
    return body + sep + question, _number(row["Answer"]), None, row.get("ID", i)


def _asdiv(row, i):
    gold = re.sub(r"\s*\(.*?\)\s*$", "", str(row["answer"])).strip()
    return f"{row['body'].strip()} {row['question'].strip()}", gold, None, row.get("idx", i)


def _mawps(row, i):
    return row["input"], _number(row["target"]), None, row.get("idx", i)


def _gsm_hard(row, i):
    return row["input"], _number(row["target"]), None, row.get("idx", i)


def _carp(row, i):
    return row["content"], row["answer"], None, i


def _tabmwp(row, i):
    title = f"{row['table_title']}\n" if row.get("table_title") else ""
    question = f"Read the table below.\n\n{title}{row['table']}\n\n{row['question']}"
    if row.get("unit"):
        question += f" (Unit: {row['unit']})"
    choices = row.get("choices")
    if choices:
        return question, LETTERS[choices.index(row["answer"])], tuple(choices), row.get("pid", i)
    return question, str(row["answer"]).replace(",", ""), None, row.get("pid", i)


def _aqua(row, i):
    choices = tuple(re.sub(r"^[A-E]\)\s*", "", o) for o in row["options"])
    return row["question"], row["correct"].strip(), choices, i


def _sat(row, i):
    parts = re.split(r"(?:^|\s)([A-D])[).]\s+", row["options"])  # "A) x B) y" or "A. x B. y"
    choices = tuple(p.strip() for p in parts[2::2])
    return row["question"], row["Answer"].strip(), choices, row.get("id", i)


def _mmlu(row, i):
    return row["question"], LETTERS[int(row["answer"])], tuple(row["choices"]), f"{row.get('type', 'mmlu')}-{i}"


def _mini(row, i):
    choices = tuple(row["choices"]) if row.get("choices") else None
    return row["question"], str(row["answer"]), choices, row.get("id", i)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's test file lives under the data directory (first existing candidate), how
    to read a row, its default number of demonstrations, and the paper's JiuZhang3.0-7B score."""

    name: str
    files: tuple[str, ...]
    fields: tuple[str, ...]
    reader: Callable
    shots: int = 0
    paper_cot: float | None = None
    multiple_choice: bool = False


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("gsm8k", ("gsm8k/test.jsonl",), ("question", "answer"), _gsm8k, paper_cot=88.6),
    DatasetSpec("math", ("math/test.jsonl", "math_oai/test.jsonl"), ("problem", "solution"), _math, paper_cot=52.8),
    DatasetSpec("math_oai", ("math_oai/test.jsonl",), ("problem", "answer"), _math, paper_cot=52.8),
    DatasetSpec("svamp", ("svamp/test.jsonl",), ("Body", "Question", "Answer"), _svamp, paper_cot=90.4),
    DatasetSpec("asdiv", ("asdiv/test.jsonl",), ("body", "question", "answer"), _asdiv, paper_cot=92.6),
    DatasetSpec("mawps", ("mawps/test.jsonl",), ("input", "target"), _mawps, paper_cot=97.3),
    DatasetSpec("carp_en", ("carp_en/test.jsonl",), ("content", "answer"), _carp, paper_cot=51.0),
    DatasetSpec("tabmwp", ("tabmwp/test.jsonl", "tabmwp/problems_test1k.json"), ("question", "table", "answer"), _tabmwp),
    DatasetSpec("aqua", ("aqua/test.jsonl",), ("question", "options", "correct"), _aqua, shots=5, multiple_choice=True),
    DatasetSpec("sat_math", ("sat_math/test.jsonl",), ("question", "options", "Answer"), _sat, shots=5,
                multiple_choice=True),
    DatasetSpec("mmlu_stem", ("mmlu_stem/test.jsonl",), ("question", "choices", "answer"), _mmlu, shots=5,
                multiple_choice=True),
    DatasetSpec("gsm_hard", ("gsm_hard/test.jsonl",), ("input", "target"), _gsm_hard),
    DatasetSpec("minerva_math", ("minerva_math/test.jsonl",), ("problem", "solution"), _minerva),
    DatasetSpec("jz3_mini", ("jz3_mini.jsonl",), ("question", "answer"), _mini),
]}
MULTIPLE_CHOICE_MIXED = {"tabmwp"}  # some rows have options, some do not


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset `name`, or an EvalError listing the known ones."""
    if name not in DATASETS:
        raise EvalError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_file(name: str, data_dir: str) -> Path:
    """The test file of `name` under `data_dir` (the package's own for jz3_mini)."""
    spec = get_spec(name)
    root = PACKAGE_DATA if name == "jz3_mini" else Path(data_dir) if data_dir else None
    if root is None:
        raise EvalError(f"dataset {name!r} needs eval.data_dir: a directory holding {' or '.join(spec.files)} "
                        "(e.g. ../shared/data/eval); jz3_mini needs none")
    for candidate in spec.files:
        if (root / candidate).is_file():
            return root / candidate
    where = "does not exist" if not root.is_dir() else "lacks it"
    raise EvalError(f"dataset {name!r}: expected {' or '.join(str(root / f) for f in spec.files)} "
                    f"(jsonl rows with fields {', '.join(spec.fields)}); the data directory {root} {where}")


def load_problems(name: str, data_dir: str = "", limit: int = 0) -> list[Problem]:
    """The problems of dataset `name` in file order (the first `limit` when limit > 0)."""
    return problems_from_file(name, dataset_file(name, data_dir), limit)


def _rows(path: Path):
    """(line, row) of a jsonl file, or of a JSON file holding a list or a dict keyed by id (TabMWP's
    `problems_test1k.json` layout: the key becomes `pid`)."""
    with path.open(encoding="utf-8") as f:
        first = f.read(1)
        f.seek(0)
        if first in "[{" and path.suffix == ".json":
            data = json.load(f)
            items = data.values() if isinstance(data, dict) else data
            keys = list(data) if isinstance(data, dict) else [None] * len(data)
            for i, (key, row) in enumerate(zip(keys, items), 1):
                yield i, ({"pid": key, **row} if key is not None else row)
            return
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except ValueError as error:
                    yield lineno, error


def problems_from_file(name: str, path: Path, limit: int = 0) -> list[Problem]:
    """The problems of dataset `name` read from `path` (its original layout)."""
    spec = get_spec(name)
    problems = []
    for lineno, row in _rows(Path(path)):
        try:
            if isinstance(row, Exception):
                raise row
            question, gold, choices, pid = spec.reader(row, len(problems))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            raise EvalError(f"{path}:{lineno}: not a {name} row ({type(error).__name__}: {error}); "
                            f"expected fields {', '.join(spec.fields)}") from None
        problems.append(Problem(name, str(pid), question, str(gold), tuple(choices) if choices else None))
        if 0 < limit <= len(problems):
            break
    return problems
