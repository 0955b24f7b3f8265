"""Run directories that are URLs: `run_dir=gs://bucket/x` stays a URL end to end (no network used)."""

from __future__ import annotations

import json
import os

import pytest

from jz3_jax.launch import main
from jz3_jax.runtime import paths
from jz3_jax.runtime.artifacts import locate_str
from jz3_jax import sweep

URL = "gs://bucket/x"


def test_print_config_keeps_the_url(capsys):
    assert main(["pretrain", "--config", "configs/tiny.py", f"run_dir={URL}", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == URL


def test_dry_run_names_the_stage_directory_under_the_url(capsys):
    assert main(["sft", "--config", "configs/tiny.py", "--run-dir", URL, "--dry-run"]) == 0
    assert f"outputs to {URL}/sft" in capsys.readouterr().out


@pytest.mark.parametrize("run_dir", [URL, "gs://bucket/x/", "runs/local"])
def test_stage_directory_joins_keep_the_scheme(run_dir):
    base = run_dir.rstrip("/")
    stage = paths.stage_dir(run_dir, "pretrain")
    assert os.fspath(stage) == f"{base}/pretrain"
    assert os.fspath(stage / "checkpoints" / "12") == f"{base}/pretrain/checkpoints/12"
    assert locate_str(run_dir, "synthesize.completions") == f"{base}/synthesize/completions/*.jsonl"


def test_urls_stay_absolute_and_get_a_local_mirror_for_logs(tmp_path):
    stage = paths.stage_dir(URL, "sft")
    assert not paths.is_local(stage) and paths.is_local(tmp_path)
    assert os.fspath(paths.absolute(stage)) == f"{URL}/sft"  # pathlib's absolute() would give CWD/gs:/...
    mirror = os.fspath(paths.local_mirror(stage / "logs"))
    assert paths.is_local(mirror) and mirror.endswith("jz3_jax/gs/bucket/x/sft/logs")
    assert paths.local_mirror(tmp_path) == tmp_path


def test_sweep_run_dirs_under_a_url():
    runs = sweep.plan("sft", "configs/tiny.py", URL, [], [["optimizer.lr=1e-4"], ["optimizer.lr=3e-4"]], [])
    assert [r.run_dir for r in runs] == [f"{URL}/optimizer.lr=1e-4", f"{URL}/optimizer.lr=3e-4"]
    assert all(r.command[r.command.index("--run-dir") + 1] == r.run_dir for r in runs)
