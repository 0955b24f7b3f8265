"""`bench.kind=forward` and `bench.kind=train` as a user runs them: the tiny model, small shapes,
the transformers/PyTorch reference timed in the same run."""

from __future__ import annotations

import math

import pytest

from helpers import last_json_line
from jz3_jax.model.config import ModelConfig
from jz3_jax.train.metrics import peak_flops_per_device
from jz3_jax.train.step import flops_per_token


def _bench(run_launch, tmp_path, *overrides: str) -> dict:
    proc = run_launch("bench", "--config", "configs/tiny.py", "--run-dir", tmp_path, "bench.batch=2",
                      "bench.seq_len=16", "bench.warmup=1", "bench.repeats=2", "bench.reference=true", *overrides,
                      timeout=180)
    assert proc.returncode == 0, proc.stderr
    return last_json_line(proc.stdout)


def _check_reference(result: dict) -> None:
    assert result["unit"] == "tokens/s" and result["dtype"] == "float32"
    assert result["ours"] > 0 and result["reference"] > 0
    assert math.isclose(result["ratio"], result["ours"] / result["reference"], rel_tol=0.01)


@pytest.mark.slow
def test_forward_bench_times_ours_and_transformers(run_launch, tmp_path):
    result = _bench(run_launch, tmp_path, "bench.kind=forward")
    assert result["kind"] == "forward" and (result["batch"], result["seq_len"]) == (2, 16)
    _check_reference(result)
    # embedding and LM head 260 x 64, two layers of attention (64 x 64 q/o, 64 x 32 k/v) + MLP + norms
    assert result["model_params"] == 2 * 260 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64


@pytest.mark.slow
def test_train_bench_reports_mfu_against_the_given_peak(run_launch, tmp_path):
    result = _bench(run_launch, tmp_path, "bench.kind=train", "train.peak_tflops=0.5")
    assert result["kind"] == "train"
    _check_reference(result)
    tiny = ModelConfig(family="llama", vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2)
    expected = flops_per_token(tiny, 16) * result["ours"] / 0.5e12
    assert 0 < result["mfu"] < 1
    assert math.isclose(result["mfu"], expected, rel_tol=0.01)


def test_peak_flops_override_and_unknown_chip():
    assert peak_flops_per_device(2.5) == 2.5e12
    assert peak_flops_per_device() is None  # a CPU is not in the table: no MFU without an override
