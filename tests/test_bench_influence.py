"""`bench.kind=influence` on the tiny model: it runs, reports both ratios and bounded memory."""

from __future__ import annotations

import pytest

from helpers import last_json_line, run_launch


@pytest.mark.slow
def test_influence_bench_reports_ratios_and_flat_memory(tmp_path):
    proc = run_launch("bench", "--config", "configs/tiny.py", "--run-dir", tmp_path, "bench.kind=influence",
                      "select.proj_dim=256", "lora.rank=4", timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = last_json_line(proc.stdout)
    assert result["kind"] == "influence" and result["unit"] == "examples/s" and result["ours"] > 0
    assert result["ratio"] > 0 and result["ratio_batched"] > 0
    assert result["lora_params"] > 0 and result["proj_dim"] == 256
    assert result["peak_memory_4x"] <= 1.1 * result["peak_memory_1x"]


def test_influence_is_a_bench_kind():
    from jz3_jax.bench.stage import KINDS

    assert KINDS["influence"] == "jz3_jax.bench.influence"
