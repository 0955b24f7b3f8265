"""The launcher as a user runs it: `python -m jz3_jax.launch ...` in a subprocess."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from jz3_jax.config import apply_overrides, config_to_dict, load_config, save_config

ALL_STAGES = ["corpus", "select", "distill", "sft", "synthesize", "filter", "pretrain", "eval", "grade",
              "serve", "convert", "bench", "pipeline"]
TINY = "configs/tiny.py"


def _config_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_help_lists_every_stage(run_launch):
    proc = run_launch("--help")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.split("stages:\n", 1)[1].splitlines()
              if line.startswith("  ") and line.split()]
    for stage in ALL_STAGES:
        assert stage in listed, f"--help does not list stage {stage!r}:\n{proc.stdout}"
    assert len(ALL_STAGES) == 13


def test_print_config_applies_overrides(run_launch):
    proc = run_launch("pretrain", "--config", TINY, "--print-config", "optimizer.lr=3e-4", "model.num_layers=3")
    cfg = _config_json(proc)
    assert cfg["optimizer"]["lr"] == 0.0003
    assert cfg["model"]["num_layers"] == 3
    assert cfg["model"]["hidden_size"] == 64  # from configs/tiny.py, not the schema default
    assert cfg["run_dir"] == "runs/tiny"


def test_run_dir_flag_overrides_config(run_launch, tmp_path):
    cfg = _config_json(run_launch("pretrain", "--config", TINY, "--run-dir", tmp_path / "r", "--print-config"))
    assert cfg["run_dir"] == str(tmp_path / "r")


def test_unknown_key_exits_2_with_suggestion(run_launch):
    proc = run_launch("pretrain", "--config", TINY, "--print-config", "optimzer.lr=1")
    assert proc.returncode == 2
    assert "optimizer.lr" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_wrong_type_exits_2(run_launch):
    proc = run_launch("pretrain", "--config", TINY, "--print-config", "optimizer.lr=abc")
    assert proc.returncode == 2
    assert "optimizer.lr" in proc.stderr and "float" in proc.stderr and "abc" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file_and_unknown_stage_exit_2(run_launch, tmp_path):
    proc = run_launch("pretrain", "--config", tmp_path / "nope.py")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_launch("pretrian", "--config", TINY)
    assert proc.returncode == 2 and "unknown stage" in proc.stderr and "pretrain" in proc.stderr


def test_unimplemented_stage_exits_2(monkeypatch, capsys, tmp_path):
    """A registered stage whose code has not landed (every stage has landed: one is made up here)."""
    from jz3_jax import launch
    from jz3_jax.stages import STAGES, Stage

    monkeypatch.setitem(STAGES, "later", Stage("later", "a stage still to come", None))
    assert launch.main(["later", "--config", TINY, "--run-dir", str(tmp_path / "run")]) == 2
    assert "not implemented yet" in capsys.readouterr().err
    # the dry run says the same without failing
    assert launch.main(["later", "--config", TINY, "--run-dir", str(tmp_path / "run"), "--dry-run"]) == 0
    assert "not implemented yet" in capsys.readouterr().out


def test_sweep_dry_run_prints_runnable_commands(run_launch, tmp_path):
    base = tmp_path / "sweep"
    proc = run_launch("pretrain", "--config", TINY, "--run-dir", base, "--sweep", "optimizer.lr=1e-4,3e-4",
                      "--sweep", "model.num_layers=1,2", "--dry-run", "train.steps=7")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 4, proc.stdout
    assert not base.exists()  # a dry run runs nothing and writes nothing

    seen, run_dirs = set(), set()
    for line in lines:
        command = shlex.split(line)
        assert command[:3] == [sys.executable, "-m", "jz3_jax.launch"]
        assert command[3] == "pretrain"
        run_dir = command[command.index("--run-dir") + 1]
        assert Path(run_dir).parent == base
        run_dirs.add(run_dir)
        cfg = _config_json(run_launch(*command[3:], "--print-config"))
        assert cfg["run_dir"] == run_dir
        assert cfg["train"]["steps"] == 7  # the base overrides travel with every run
        seen.add((cfg["optimizer"]["lr"], cfg["model"]["num_layers"]))
        # the run's own values are in its command
        (lr_arg,) = [a for a in command if a.startswith("optimizer.lr=")]
        assert float(lr_arg.split("=", 1)[1]) == cfg["optimizer"]["lr"]
        assert f"model.num_layers={cfg['model']['num_layers']}" in command
    assert len(run_dirs) == 4
    assert seen == {(1e-4, 1), (1e-4, 2), (3e-4, 1), (3e-4, 2)}


def test_sweep_rejects_bad_values_before_running_anything(run_launch, tmp_path):
    base = tmp_path / "sweep"
    proc = run_launch("pretrain", "--config", TINY, "--run-dir", base, "--sweep", "optimizer.lr=1e-4,abc")
    assert proc.returncode == 2
    assert "optimizer.lr" in proc.stderr and "abc" in proc.stderr
    assert not (base / "sweep.jsonl").exists()
    proc = run_launch("pretrain", "--config", TINY, "--run-dir", base, "--sweep", "optimzer.lr=1", "--dry-run")
    assert proc.returncode == 2 and "optimizer.lr" in proc.stderr


def test_sweep_file_dry_run(run_launch, tmp_path):
    sweep_file = tmp_path / "sweep_def.py"
    sweep_file.write_text('SWEEP = [{"optimizer.lr": 1e-4}, {"optimizer.lr": 2e-4, "model.num_layers": 1}]\n')
    proc = run_launch("pretrain", "--config", TINY, "--run-dir", tmp_path / "s", "--sweep-file", sweep_file,
                      "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, proc.stdout
    first, second = (shlex.split(line) for line in lines)
    assert "optimizer.lr=0.0001" in first and not any(a.startswith("model.num_layers=") for a in first)
    assert "optimizer.lr=0.0002" in second and "model.num_layers=1" in second
    assert first[first.index("--run-dir") + 1] != second[second.index("--run-dir") + 1]

    # a sweep file combines with a grid: 2 entries x 2 seeds
    proc = run_launch("pretrain", "--config", TINY, "--run-dir", tmp_path / "s", "--sweep-file", sweep_file,
                      "--sweep", "seed=1,2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.strip()]) == 4


def test_bad_sweep_file_exits_2(run_launch, tmp_path):
    sweep_file = tmp_path / "empty_sweep.py"
    sweep_file.write_text("SWEEP = []\n")
    proc = run_launch("pretrain", "--config", TINY, "--sweep-file", sweep_file, "--dry-run")
    assert proc.returncode == 2 and "SWEEP" in proc.stderr


def _manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_real_sweep_records_failed_runs_and_exits_nonzero(run_launch, tmp_path):
    base = tmp_path / "sweep"
    proc = run_launch("convert", "--config", TINY, "--run-dir", base, "--sweep", "seed=1,2")  # no convert.src
    assert proc.returncode == 1, proc.stderr
    assert "0 of 2 runs done" in proc.stderr
    assert proc.stderr.count("convert needs convert.src") == 2  # each child ran and failed on its own
    records = _manifest(base / "sweep.jsonl")
    assert len(records) == 2
    assert [r["overrides"] for r in records] == [["seed=1"], ["seed=2"]]
    assert all(r["status"] == "failed" and r["returncode"] == 2 for r in records)
    assert len({r["run_dir"] for r in records}) == 2
    assert all(Path(r["run_dir"]).parent == base for r in records)


def test_rerun_sweep_skips_runs_already_done(run_launch, tmp_path):
    base = tmp_path / "sweep"
    dry = run_launch("convert", "--config", TINY, "--run-dir", base, "--sweep", "seed=1,2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    run_dirs = [shlex.split(line)[shlex.split(line).index("--run-dir") + 1] for line in dry.stdout.splitlines()]
    assert len(run_dirs) == 2
    # pretend seed=1 finished in an earlier launch: only seed=2 runs now
    base.mkdir(parents=True)
    (base / "sweep.jsonl").write_text(
        json.dumps({"overrides": ["seed=1"], "run_dir": run_dirs[0], "status": "done", "returncode": 0}) + "\n"
    )
    proc = run_launch("convert", "--config", TINY, "--run-dir", base, "--sweep", "seed=1,2")
    assert proc.returncode == 1, proc.stderr
    assert "already done, skipped" in proc.stderr
    assert proc.stderr.count("convert needs convert.src") == 1
    records = _manifest(base / "sweep.jsonl")
    assert [(r["run_dir"], r["status"]) for r in records] == [(run_dirs[0], "done"), (run_dirs[1], "failed")]


def test_relaunch_from_resolved_config_json(run_launch, repo_root, tmp_path):
    overrides = ["optimizer.lr=3e-4", "model.num_layers=3", "mesh.rules=batch=data,embed=fsdp", "seed=5"]
    original = _config_json(run_launch("pretrain", "--config", TINY, "--run-dir", tmp_path / "run",
                                       "--print-config", *overrides))
    # what run_stage writes to RUN_DIR/STAGE/config.json (no stage that runs on tiny has landed yet)
    cfg = apply_overrides(load_config(repo_root / TINY), overrides)
    cfg.run_dir = str(tmp_path / "run")
    resolved = tmp_path / "run" / "pretrain" / "config.json"
    save_config(cfg, resolved)
    assert config_to_dict(cfg) == original

    again = _config_json(run_launch("pretrain", "--config", resolved, "--print-config"))
    assert again == original
    assert again["mesh"]["rules"] == ["batch=data", "embed=fsdp"]
    # and overrides still apply on top of a resolved config
    changed = _config_json(run_launch("pretrain", "--config", resolved, "--print-config", "seed=6"))
    assert changed["seed"] == 6 and {**changed, "seed": 5} == original


@pytest.mark.slow
@pytest.mark.skipif(
    not (Path(__file__).resolve().parent.parent / "jz3_jax" / "bench" / "stage.py").is_file(),
    reason="the bench stage has not landed yet",
)
def test_real_stage_writes_resolved_config_and_sweep_marks_done(run_launch, tmp_path):
    base = tmp_path / "bench"
    overrides = ["bench.repeats=1", "bench.warmup=0", "bench.reference=false"]
    sweep = ["bench", "--config", TINY, "--run-dir", base, "--sweep", "seed=3", *overrides]
    proc = run_launch(*sweep, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 1 runs done" in proc.stderr
    (record,) = _manifest(base / "sweep.jsonl")
    assert record["status"] == "done" and record["returncode"] == 0
    written = Path(record["run_dir"]) / "bench" / "config.json"
    assert written.is_file()
    # relaunching from the resolved config gives exactly the config the run had
    expected = _config_json(run_launch("bench", "--config", TINY, "--run-dir", record["run_dir"], "--print-config",
                                       *overrides, "seed=3"))
    assert _config_json(run_launch("bench", "--config", written, "--print-config")) == expected
    assert expected["seed"] == 3 and expected["bench"]["repeats"] == 1
    # rerunning the sweep skips the finished run and succeeds without running it again
    proc = run_launch(*sweep, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "already done, skipped" in proc.stderr
    assert len(_manifest(base / "sweep.jsonl")) == 1
