"""The sft/pretrain trainer end to end through the launcher: resume, preemption, sharding, bad data."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO_ROOT, run_launch, subprocess_env


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory) -> Path:
    """64 short `input`/`output` records (byte-tokenized by the tiny config)."""
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    with path.open("w") as f:
        for i in range(64):
            a, b = (7 * i) % 50, (13 * i) % 40
            f.write(json.dumps({"input": f"Q: {a}+{b}=?\nA: ", "output": f"{a + b}"}) + "\n")
    return path


def train_args(run_dir: Path, data: Path, *extra: str) -> list[str]:
    return ["sft", "--config", "configs/tiny.py", "--run-dir", str(run_dir), f"data.train_path={data}",
            "data.max_length=48", "train.global_batch_size=8", "train.steps=8", "train.checkpoint_every=3",
            "train.export_hf=false", "optimizer.lr=3e-3", *extra]


def losses(run_dir: Path, stage: str = "sft") -> dict[int, float]:
    lines = (run_dir / stage / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def launch_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "jz3_jax.launch", *args]


def wait_for(predicate, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.stderr.read() if process.stderr else "process exited"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def checkpoint_steps(run_dir: Path) -> set[int]:
    directory = run_dir / "sft" / "checkpoints"
    if not directory.is_dir():
        return set()
    # orbax writes into a temporary name and renames it when the step is complete
    return {int(p.name) for p in directory.iterdir() if p.name.isdigit()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, arithmetic) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("full")
    result = run_launch(*train_args(run_dir, arithmetic), timeout=300)
    assert result.returncode == 0, result.stderr
    values = losses(run_dir)
    assert sorted(values) == list(range(1, 9))
    assert values[8] < values[1]
    return values


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, arithmetic, uninterrupted):
    args = train_args(tmp_path, arithmetic, "train.log_every=1")
    process = subprocess.Popen(launch_command(args), cwd=REPO_ROOT, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: 3 in checkpoint_steps(tmp_path), process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    latest = max(checkpoint_steps(tmp_path))
    assert latest < 8
    resumed = run_launch(*args, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint at step {latest}" in resumed.stderr
    values = losses(tmp_path)
    assert sorted(values) == list(range(1, 9))  # no step lost or logged twice
    for step in range(latest + 1, 9):
        assert values[step] == pytest.approx(uninterrupted[step], abs=1e-6)


def test_sigterm_saves_checkpoint_at_current_step(tmp_path, arithmetic):
    args = train_args(tmp_path, arithmetic, "train.steps=400", "train.checkpoint_every=1000")
    process = subprocess.Popen(launch_command(args), cwd=REPO_ROOT, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "sft" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    saved = checkpoint_steps(tmp_path)
    logged = max(losses(tmp_path))
    assert saved == {logged}, (saved, logged)  # a checkpoint at the step it stopped, nothing else
    assert f"SIGTERM: checkpoint saved at step {logged}" in stderr


def test_sharded_equals_unsharded(tmp_path, arithmetic, uninterrupted):
    args = train_args(tmp_path, arithmetic, "train.steps=5", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2")
    result = subprocess.run(launch_command(args), cwd=REPO_ROOT, env=subprocess_env(devices=8),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "8 device(s)" in result.stderr
    sharded = losses(tmp_path)
    for step in range(1, 6):
        assert sharded[step] == pytest.approx(uninterrupted[step], abs=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, arithmetic):
    common = ["train.steps=4", "data.pack=false", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    single = subprocess.run(launch_command(train_args(tmp_path / "one", arithmetic, *common)), cwd=REPO_ROOT,
                            env=subprocess_env(devices=8), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    port = _free_port()
    processes = []
    for pid in range(2):
        args = train_args(tmp_path / "two", arithmetic, *common, f"distributed.coordinator_address=127.0.0.1:{port}",
                          "distributed.num_processes=2", f"distributed.process_id={pid}")
        processes.append(subprocess.Popen(launch_command(args), cwd=REPO_ROOT, env=subprocess_env(devices=4),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=300)[1] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert "2 process(es), 8 device(s)" in outputs[0]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5)


def test_malformed_line_is_named_or_skipped(tmp_path, arithmetic):
    bad = tmp_path / "bad.jsonl"
    lines = arithmetic.read_text().splitlines()
    lines.insert(4, '{"input": "Q: 1+1=?", "output": ')
    bad.write_text("\n".join(lines) + "\n")
    result = run_launch(*train_args(tmp_path / "a", bad), timeout=120)
    assert result.returncode == 2
    assert "bad.jsonl" in result.stderr and "bad.jsonl:5" in result.stderr
    skipped = run_launch(*train_args(tmp_path / "b", bad, "data.bad_records=skip", "train.steps=2"), timeout=300)
    assert skipped.returncode == 0, skipped.stderr
    record = json.loads((tmp_path / "b" / "sft" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped_records"] == 1


def test_epoch_steps_come_from_an_index_built_once(tmp_path, arithmetic):
    args = train_args(tmp_path, arithmetic, "train.steps=0", "train.epochs=1", "train.checkpoint_every=2")
    first = run_launch(*args, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "data index: " in first.stderr and "data: 64 training records" in first.stderr
    steps = int(re.search(r"INFO training (\d+) steps", first.stderr).group(1))
    assert sorted(losses(tmp_path)) == list(range(1, steps + 1))
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "sft" / "data_index").rglob("*.npz")}
    assert parts
    again = run_launch(*args, timeout=300)  # resumes at the last checkpoint: nothing is counted again
    assert again.returncode == 0, again.stderr
    assert f"resumed from checkpoint at step {steps}" in again.stderr
    assert "data index: " not in again.stderr and f"training {steps} steps" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "sft" / "data_index").rglob("*.npz")} == parts


def test_empty_dataset_fails_before_compiling(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_launch(*train_args(tmp_path, empty), timeout=120)
    assert result.returncode == 2
    assert "no records" in result.stderr and "empty.jsonl" in result.stderr
    assert not (tmp_path / "sft" / "checkpoints").exists()


SHARED = REPO_ROOT.parent / "shared" / "data" / "jiuzhang_samples" / "finetune_data_sampled.jsonl"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_file(), reason="../shared data not present")
def test_sft_smollm2_on_real_rows_lowers_loss(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(SHARED.read_text().splitlines(keepends=True)[:200]))
    result = run_launch("sft", "--config", "configs/smollm2.py", "--run-dir", str(tmp_path), f"data.train_path={rows}",
                        "data.max_length=128", "data.eval_rows=16", "train.global_batch_size=4", "train.steps=4",
                        "train.eval_every=4", "train.checkpoint_every=100", "train.export_hf=false",
                        "optimizer.lr=1e-4", "optimizer.schedule=constant", "optimizer.warmup_fraction=0",
                        "model.scan_layers=true",  # one layer body to compile: about 10 s less on 2 cores
                        timeout=900)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-2:]) / 2
    assert last < first
    assert records[-1]["eval_loss"] is not None and records[-1]["eval_loss"] > 0
