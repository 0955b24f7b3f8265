"""TFDS builders of the evaluation sets: built from a manual directory (no network, no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jz3_jax.eval.datasets import problems_from_file
from jz3_jax.errors import EvalError

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
tfds = pytest.importorskip("tensorflow_datasets")


def _write_tabmwp(manual: Path) -> None:
    rows = {"7": {"question": "How many?", "table": "a | 1\nb | 2", "table_title": "T", "answer": "3", "choices": None,
                  "unit": None},
            "9": {"question": "Is it more?", "table": "a | 1", "table_title": "", "answer": "no",
                  "choices": ["yes", "no"], "unit": None}}
    (manual / "tabmwp").mkdir(parents=True)
    (manual / "tabmwp" / "problems_test1k.json").write_text(json.dumps(rows))


def test_builder_reads_the_original_layout_from_the_manual_dir(tmp_path):
    from jz3_jax.eval.tfds_builders import build

    manual = tmp_path / "manual"
    _write_tabmwp(manual)
    source = tfds.builder_from_directory(str(build("tabmwp", str(tmp_path / "tfds"), str(manual)))).as_data_source("test")
    rows = [source[i] for i in range(len(source))]
    assert [r["id"] for r in rows] == [b"7", b"9"]
    assert rows[0]["gold"] == b"3" and rows[1]["gold"] == b"B" and list(rows[1]["choices"]) == [b"yes", b"no"]
    assert rows[0]["question"].decode().startswith("Read the table below.\n\nT\na | 1")


def test_offline_without_a_manual_file_says_where_to_put_it(tmp_path):
    from jz3_jax.eval.tfds_builders import build

    with pytest.raises(EvalError, match=r"MANUAL_DIR/tabmwp/problems_test1k.json"):
        build("tabmwp", str(tmp_path / "tfds"), str(tmp_path / "empty"))


@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="../shared/data/eval is absent")
def test_gsm8k_builder_matches_the_jsonl_reader(tmp_path):
    from jz3_jax.eval.tfds_builders import build

    source = tfds.builder_from_directory(str(build("gsm8k", str(tmp_path), str(SHARED_EVAL)))).as_data_source("test")
    expected = problems_from_file("gsm8k", SHARED_EVAL / "gsm8k" / "test.jsonl")
    assert len(source) == len(expected) == 1319
    for i in (0, 700, 1318):
        assert source[i]["gold"].decode() == expected[i].gold and source[i]["question"].decode() == expected[i].question
