"""`bench.kind=decode` as a user runs it: the tiny model, small shapes, transformers reference on."""

from __future__ import annotations

import math
import time

import pytest

from helpers import last_json_line


@pytest.mark.slow
def test_decode_bench_reports_throughput_reference_and_bandwidth(run_launch, tmp_path):
    batch, prompt_len, new_tokens = 2, 8, 6
    start = time.perf_counter()
    proc = run_launch("bench", "--config", "configs/tiny.py", "--run-dir", tmp_path, "bench.kind=decode",
                      f"bench.batch={batch}", f"bench.prompt_len={prompt_len}", f"bench.new_tokens={new_tokens}",
                      "bench.warmup=1", "bench.repeats=2", "bench.reference=true", timeout=120)
    assert proc.returncode == 0, proc.stderr
    wall_s = time.perf_counter() - start
    result = last_json_line(proc.stdout)
    assert result["kind"] == "decode" and result["unit"] == "tokens/s" and result["dtype"] == "float32"
    assert (result["batch"], result["prompt_len"], result["new_tokens"]) == (batch, prompt_len, new_tokens)
    # every timed repeat generated batch x new_tokens inside the launch: a lower bound on the rate
    assert result["ours"] > batch * new_tokens / wall_s and result["reference"] > batch * new_tokens / wall_s
    assert result["ratio"] > 0
    # the tiny model's float32 parameters, counted by hand: embedding and LM head 260 x 64, per layer
    # q/o 64 x 64, k/v 64 x 32, gate/up/down 64 x 128 and two norms of 64, two layers, final norm 64
    weight_bytes = 4 * (2 * 260 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64) + 64)  # 404,736
    assert result["weight_bytes"] == weight_bytes
    step = result["seconds_per_decode_token"]
    assert 0 < step < wall_s / new_tokens
    assert 0.5 < result["memory_bandwidth_gbs"] < 10_000
    assert "bytes read + bytes written" in result["bandwidth_convention"]
    # each decode step reads every weight once: the known bytes per token over the step time
    expected = weight_bytes / step / (result["memory_bandwidth_gbs"] * 1e9)
    assert math.isclose(result["bandwidth_fraction"], expected, rel_tol=0.02, abs_tol=1e-3)
    assert result["peak_memory_bytes"] > 0


def test_device_bandwidth_is_measured_on_the_benchmarked_device():
    """The bandwidth bound comes from a copy on the device itself (jitted), not from host memory,
    so on a GPU it is the HBM's; on CPU the device copy measures host memory like numpy does."""
    import jax

    from jz3_jax.bench.decode import device_bandwidth_gbs

    gbs = device_bandwidth_gbs(jax.devices()[0], repeats=2, nbytes=64 * 2**20)
    assert 0.5 < gbs < 10_000
