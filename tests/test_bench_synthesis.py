"""`bench.kind=synthesis`: the workload (distinct corpus snippets, one level's template, lengths
with the cap at `length_spread` x the mean) and a run on the tiny model, paged vs contiguous."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import last_json_line
from jz3_jax.bench.synthesis import corpus_snippets, new_token_counts


def test_snippets_are_distinct_corpus_texts_then_pairs():
    from jz3_jax.pipeline.assets import data_path

    with open(data_path("corpus.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    snippets = corpus_snippets(3 * len(texts))
    assert snippets[: len(texts)] == texts
    assert len(set(snippets)) == len(snippets)
    assert snippets[len(texts)] == texts[0] + "\n\n" + texts[1]  # round 1 pairs text i with text i + 1


def test_new_token_counts_cap_and_mean():
    counts = new_token_counts(4000, cap=256, spread=4.0, seed=0)
    assert min(counts) >= 1 and max(counts) == 256  # the exponential's tail reaches the cap
    assert 60 < np.mean(counts) < 68  # mean 64 (clipping at 4x the mean removes about 2%)
    assert counts == new_token_counts(4000, 256, 4.0, 0)


def test_synthesis_bench_on_the_tiny_model(run_launch, tmp_path):
    """Both engines on 8 prompts (byte tokenizer: about 1,100-1,160 tokens, 1,000 of them the shared
    template): the same greedy tokens, the prefix cache skips most of the prompts, and the paged
    engine runs more rows in the same cache bytes. (A large prompt bucket keeps the compiles few.)"""
    proc = run_launch("bench", "--config", "configs/tiny.py", "--run-dir", tmp_path, "bench.kind=synthesis",
                      "bench.requests=8", "bench.batch=2", "sampling.max_new_tokens=64", "engine.prompt_bucket=1024",
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json_line(proc.stdout)
    assert result["kind"] == "synthesis" and result["requests"] == 8 and result["identical"] is True
    assert result["generated_tokens"] == sum(new_token_counts(8, 64, 4.0, 0))
    assert result["prefill_tokens_total"] >= 8 * 1000 and result["prefill_tokens_computed"] < result[
        "prefill_tokens_total"]
    assert result["prefix_saved_fraction"] == pytest.approx(
        1 - result["prefill_tokens_computed"] / result["prefill_tokens_total"], abs=1e-3)
    assert result["prefix_saved_fraction"] > 0.5
    assert result["max_rows_contiguous"] <= 2 < result["max_rows_paged"] <= 8  # 4 x 2 rows at most
    assert result["rows_ratio"] > 1
    assert result["ratio"] == pytest.approx(result["tokens_per_s_paged"] / result["tokens_per_s_contiguous"],
                                            rel=1e-2)
