"""`bench.kind=decode` as a user runs it: the tiny model, small shapes, transformers reference on."""

from __future__ import annotations

import math

import pytest

from helpers import last_json_line


@pytest.mark.slow
def test_decode_bench_reports_throughput_reference_and_bandwidth(run_launch, tmp_path):
    batch, prompt_len, new_tokens = 2, 8, 6
    proc = run_launch("bench", "--config", "configs/tiny.py", "--run-dir", tmp_path, "bench.kind=decode",
                      f"bench.batch={batch}", f"bench.prompt_len={prompt_len}", f"bench.new_tokens={new_tokens}",
                      "bench.warmup=1", "bench.repeats=2", "bench.reference=true", timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = last_json_line(proc.stdout)
    assert result["kind"] == "decode" and result["unit"] == "tokens/s" and result["dtype"] == "float32"
    assert (result["batch"], result["prompt_len"], result["new_tokens"]) == (batch, prompt_len, new_tokens)
    assert result["ours"] > 0 and result["reference"] > 0
    assert math.isclose(result["ratio"], result["ours"] / result["reference"], rel_tol=0.01)
    # the tiny model's float32 parameters: embedding and LM head 260 x 64, two layers, final norm
    layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64
    assert result["weight_bytes"] == 4 * (2 * 260 * 64 + 2 * layer + 64)
    step = result["seconds_per_decode_token"]
    assert 0 < step < 1
    assert 0.5 < result["memory_bandwidth_gbs"] < 10_000
    assert "bytes read + bytes written" in result["bandwidth_convention"]
    expected = result["weight_bytes"] / step / (result["memory_bandwidth_gbs"] * 1e9)
    assert math.isclose(result["bandwidth_fraction"], expected, rel_tol=0.02, abs_tol=1e-3)
    assert result["peak_memory_bytes"] > 0
