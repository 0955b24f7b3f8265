"""`bench.kind=forward` and `bench.kind=train` as a user runs them: the tiny model, small shapes,
the transformers/PyTorch reference timed in the same run."""

from __future__ import annotations

import math
import time

import pytest

from helpers import last_json_line
from jz3_jax.model.config import ModelConfig
from jz3_jax.train.metrics import peak_flops_per_device
from jz3_jax.train.step import flops_per_token


def _bench(run_launch, tmp_path, *overrides: str) -> tuple[dict, float]:
    """(the benchmark's JSON line, wall seconds of the whole launch)."""
    start = time.perf_counter()
    proc = run_launch("bench", "--config", "configs/tiny.py", "--run-dir", tmp_path, f"bench.batch={BATCH}",
                      f"bench.seq_len={SEQ}", "bench.warmup=1", "bench.repeats=2", "bench.reference=true", *overrides,
                      timeout=180)
    assert proc.returncode == 0, proc.stderr
    return last_json_line(proc.stdout), time.perf_counter() - start


BATCH, SEQ = 2, 16
# Training FLOPs per token of configs/tiny.py at 16 tokens, counted by hand: 6 x the parameters in
# matmuls (per layer q 64x64, k 64x32, v 64x32, o 64x64, gate/up/down 64x128: 36,864; two layers;
# LM head 260x64 = 16,640; 90,368 in all) + attention scores and values, 2 x 2 x heads 4 x head_dim 16
# x 16 positions per layer forward, times 3 for the backward pass (PaLM's 12 x layers x heads x dim x T).
TINY_TRAIN_FLOPS_PER_TOKEN = 6 * 90_368 + 12 * 2 * 4 * 16 * 16  # 566,784


def _check_throughput(result: dict, wall_s: float) -> None:
    assert result["unit"] == "tokens/s" and result["dtype"] == "float32"
    # every timed repeat ran inside the launch: a lower bound on the rate, independent of the harness
    assert result["ours"] > BATCH * SEQ / wall_s and result["reference"] > BATCH * SEQ / wall_s
    assert result["ratio"] > 0


def test_report_ratio_is_ours_over_reference(capsys):
    from jz3_jax.bench.harness import report

    result = report("x", "tokens/s", 300.0, 120.0)
    assert result["ratio"] == 2.5  # faster than the reference: above 1
    assert report("x", "tokens/s", 50.0, 200.0)["ratio"] == 0.25
    assert "reference" not in report("x", "tokens/s", 1.0) and "ratio" not in report("x", "tokens/s", 1.0)


@pytest.mark.slow
def test_forward_bench_times_ours_and_transformers(run_launch, tmp_path):
    result, wall_s = _bench(run_launch, tmp_path, "bench.kind=forward")
    assert result["kind"] == "forward" and (result["batch"], result["seq_len"]) == (BATCH, SEQ)
    _check_throughput(result, wall_s)
    # embedding and LM head 260 x 64, two layers of attention (64 x 64 q/o, 64 x 32 k/v) + MLP + norms
    assert result["model_params"] == 2 * 260 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64


def test_flops_per_token_matches_the_hand_count():
    tiny = ModelConfig(family="llama", vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2)
    assert flops_per_token(tiny, SEQ) == TINY_TRAIN_FLOPS_PER_TOKEN


@pytest.mark.slow
def test_train_bench_reports_mfu_against_the_given_peak(run_launch, tmp_path):
    result, wall_s = _bench(run_launch, tmp_path, "bench.kind=train", "train.peak_tflops=0.5")
    assert result["kind"] == "train"
    _check_throughput(result, wall_s)
    assert 0 < result["mfu"] < 1
    assert math.isclose(result["mfu"], TINY_TRAIN_FLOPS_PER_TOKEN * result["ours"] / 0.5e12, rel_tol=0.01)


def test_peak_flops_override_and_unknown_chip():
    assert peak_flops_per_device(2.5) == 2.5e12
    assert peak_flops_per_device() is None  # a CPU is not in the table: no MFU without an override
