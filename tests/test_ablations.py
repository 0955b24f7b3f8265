"""The paper's ablations as sweep files (configs/ablations/): each expands into its runs with
--dry-run, and every switch reaches the stage that honours it (checked on the pipeline's plan)."""

from __future__ import annotations

import shlex

import pytest

from helpers import REPO_ROOT, run_launch
from jz3_jax.config import apply_overrides, load_config
from jz3_jax.pipeline.stage import plan
from jz3_jax.sweep import load_sweep_file

FILES = {"selection": 3, "education_stages": 4, "data_kinds": 3, "kd_size": 3, "synthesizer_size": 3}


@pytest.mark.parametrize("name", sorted(FILES))
def test_sweep_file_expands_into_its_runs(name, tmp_path):
    path = f"configs/ablations/{name}.py"
    proc = run_launch("pipeline", "--config", "configs/tiny.py", "--run-dir", tmp_path, "--sweep-file", path,
                      "--dry-run")
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(commands) == FILES[name]
    run_dirs = [c[c.index("--run-dir") + 1] for c in commands]
    assert len(set(run_dirs)) == len(run_dirs) and all(d.startswith(str(tmp_path)) for d in run_dirs)


def step_configs(overrides: list[str]) -> dict:
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")), overrides)
    cfg.run_dir = "/tmp/ablation"
    planned, _ = plan(cfg)
    return {step.name: step_cfg for step, step_cfg, _ in planned}


def runs(name: str) -> list[list[str]]:
    return load_sweep_file(str(REPO_ROOT / "configs" / "ablations" / f"{name}.py"))


def test_selection_switches_reach_the_pipeline_and_select():
    none, random, influence = (step_configs(r) for r in runs("selection"))
    assert "select" not in none and "distill_boost" not in none
    assert none["synthesize"].model.checkpoint == "/tmp/ablation/sft_initial/hf"
    assert random["select"].select.method == "random" and influence["select"].select.method == "influence"
    assert random["synthesize"].model.checkpoint == "/tmp/ablation/sft_boost/hf"


def test_education_stages_and_kinds_reach_the_teacher_and_the_synthesizer():
    for overrides in runs("education_stages"):
        steps = step_configs(overrides)
        levels = overrides[0].split("=", 1)[1].split(",")
        for name in ("distill_initial", "distill_boost"):
            assert steps[name].distill.levels == levels
        assert steps["synthesize"].synthesize.levels == levels
    kinds = [step_configs(r) for r in runs("data_kinds")]
    assert [k["distill_initial"].distill.kinds for k in kinds] == [["cot"], ["tool"], ["cot", "tool"]]
    assert [k["synthesize"].synthesize.kinds for k in kinds] == [["cot"], ["tool"], ["cot", "tool"]]


def test_kd_size_sets_the_first_round_and_the_selection():
    sizes = [step_configs(r) for r in runs("kd_size")]
    assert [s["distill_initial"].distill.num_snippets for s in sizes] == [1000, 2650, 5300]
    assert [s["select"].select.top_k for s in sizes] == [1000, 2000, 4000]
    assert all(s["distill_boost"].distill.num_snippets == 0 for s in sizes)  # every selected snippet


def test_synthesizer_size_changes_the_synthesizer_only():
    for overrides in runs("synthesizer_size"):
        path = overrides[0].split("=", 1)[1]
        steps = step_configs(overrides)
        assert steps["sft_initial"].model.checkpoint == steps["sft_boost"].model.checkpoint == path
        assert steps["pretrain"].model.checkpoint == steps["eval_base"].model.checkpoint == ""  # tiny's random base
