"""`compile.program=decode` with a length distribution: both caches sized to a v5p chip's HBM from two
compiles each, the rows they hold (paged vs contiguous), both programs compiled at those sizes, and
the Pallas paged-attention kernel in the paged decode step. Needs libtpu (skipped without)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, subprocess_env

LAUNCH = "import sys\nfrom jz3_jax.launch import main\nsys.exit(main(['compile'] + sys.argv[1:]))\n"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed: no TPU compiler")
def test_paged_vs_contiguous_rows_on_a_v5p_8_host(tmp_path):
    """The small model (16 kv heads over 4 chips, 2 layers, bfloat16: 4,096 cache bytes per token per
    chip) for requests of 16,384 tokens on average, at most 65,536: a few hundred rows either way."""
    env = subprocess_env()
    env.pop("JAX_PLATFORMS")
    proc = subprocess.run([sys.executable, "-c", LAUNCH, "--config", "configs/tiny_compile.py", "--run-dir",
                           str(tmp_path), "compile.program=decode", "compile.topology=v5p-8", "engine.max_batch=8",
                           "compile.max_tokens=65536", "compile.mean_tokens=16384"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "compile" / "compile.json").read_text())
    sized = report["sized"]
    assert sized["bytes_per_token"] == 2 * 2 * (16 // 4) * 128 * 2  # layers x k/v x kv heads per chip x d x bf16
    contiguous, paged = sized["contiguous"], sized["paged"]
    assert contiguous["fits"] and paged["fits"] and report["fits"]
    limit = sized["limit_bytes"]
    for program in (contiguous, paged):  # sized to the limit: within it, and not far below
        assert 0.8 * limit < program["memory_per_device"]["total_bytes"] <= report["topology"]["hbm_bytes_per_device"]
    assert contiguous["rows"] == sized["contiguous_budget_bytes"] // (65536 * sized["bytes_per_token"])
    assert paged["rows"] == (paged["pool_pages"] - 1) // sized["pages_per_mean_row"]
    assert sized["rows_ratio"] == round(paged["rows"] / contiguous["rows"], 3)
    # The decode loop writes into the pool in place: no second copy of it among the temporaries.
    assert sized["fit"]["paged"]["per_cache_byte"] < 1.1, sized["fit"]
    assert paged["attention"] == "pallas" and paged["kernel_in_program"] and "paged_attention" in paged["kernels"]
    assert "rows that fit: paged" in proc.stdout
