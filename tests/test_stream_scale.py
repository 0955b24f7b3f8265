"""Scale: `corpus` and `synthesize` memory stays flat as their input grows 4x (slow; data written to tmp_path).

Peak RSS is the kernel's high-water mark of the stage's own process (`ru_maxrss`). The figures in
the README come from the same helpers (`tests/stream_data.py measure-corpus | measure-synthesize`)
at larger sizes. Before streaming, corpus held about 1.8 MB per MB of text and synthesize's
preparation about 2.3 KB per prompt, so each ratio below was about 1.5 (corpus) and 3.5 (prep).
"""

from __future__ import annotations

import json

import pytest

from stream_data import measure_corpus, measure_synthesize, measure_synthesize_prep, write_corpus, write_snippets

pytestmark = pytest.mark.slow


def test_corpus_memory_is_flat_in_the_input_size(tmp_path):
    small = measure_corpus(write_corpus(tmp_path / "small", 16, seed=1), tmp_path / "run_small", "corpus.max_snippets=5000")
    large = measure_corpus(write_corpus(tmp_path / "large", 64, seed=2), tmp_path / "run_large", "corpus.max_snippets=5000")
    assert small["snippets"] == large["snippets"] == 5000
    assert large["peak_rss_mb"] <= 1.3 * small["peak_rss_mb"], (small, large)


def test_synthesize_preparation_is_flat_in_the_number_of_prompts(tmp_path):
    small = measure_synthesize_prep(write_snippets(tmp_path / "small.jsonl", 50_000))
    large = measure_synthesize_prep(write_snippets(tmp_path / "large.jsonl", 200_000, seed=1))
    assert large["prompts"] > 3.9 * small["prompts"]
    assert large["peak_rss_mb"] <= 1.3 * small["peak_rss_mb"], (small, large)


def test_synthesize_up_to_its_first_completion_stays_under_the_bound(tmp_path):
    """The whole stage (JAX, the tiny model's engine and its compiled programs included) on 200k
    snippets, stopped when its first completion shard is written."""
    snippets = write_snippets(tmp_path / "snippets.jsonl", 200_000)
    unique = len({json.loads(line)["id"] for line in snippets.open()})
    result = measure_synthesize(snippets, tmp_path / "run")
    assert f"{unique} prompts, 0 already done, {unique} for process 0" in result["log"], result
    assert result["peak_rss_mb"] < 1500, result
