"""The `select` stage end to end through the launcher (tiny random model, byte tokenizer)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO_ROOT, run_launch, subprocess_env

COMMON = ["select.proj_dim=256", "select.warmup_fraction=0.3", "select.warmup_epochs=2",
          "select.warmup_batch_size=4", "select.warmup_lr=1e-3", "lora.rank=8", "lora.alpha=16",
          "select.max_length=64", "select.top_k=10"]
WORDS = "the a cat dog sat ran on under house tree big small red blue quickly slowly".split()


def write_inputs(directory: Path) -> tuple[Path, Path]:
    """60 candidates from two clearly different distributions (sums vs. word salad) and 6 sum targets in
    two tasks."""
    r = random.Random(0)
    cands, targets = directory / "cands.jsonl", directory / "targets.jsonl"
    with cands.open("w") as f:
        for i in range(60):
            if i % 2 == 0:
                a, b = r.randint(10, 999), r.randint(10, 999)
                f.write(json.dumps({"id": f"math{i}", "text": f"{a} + {b} = {a + b}; {a} * 3 = {a * 3}.",
                                    "source": "m"}) + "\n")
            else:
                text = " ".join(r.choice(WORDS) for _ in range(r.randint(5, 12)))
                f.write(json.dumps({"id": f"prose{i}", "input": "Say:", "output": text, "source": "p"}) + "\n")
    with targets.open("w") as f:
        for i in range(6):
            a, b = r.randint(10, 999), r.randint(10, 999)
            f.write(json.dumps({"task": "add" if i < 3 else "add2", "input": f"{a} + {b} =",
                                "output": f" {a + b}"}) + "\n")
    return cands, targets


def select(run_dir: Path, cands: Path, targets: Path, *extra: str, timeout: float = 300):
    return run_launch("select", "--config", "configs/tiny.py", "--run-dir", run_dir, f"select.candidates={cands}",
                      f"select.targets={targets}", *COMMON, *extra, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return write_inputs(tmp_path_factory.mktemp("select_inputs"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, inputs) -> Path:
    run_dir = tmp_path_factory.mktemp("select_run")
    proc = select(run_dir, *inputs)
    assert proc.returncode == 0, proc.stderr
    return run_dir / "select"


def test_top_k_come_from_the_matching_distribution(full_run, inputs):
    selected = read_jsonl(full_run / "selected.jsonl")
    assert len(selected) == 10
    precision = sum(r["id"].startswith("math") for r in selected) / len(selected)
    assert precision >= 0.9, [r["id"] for r in selected]
    scores = [r["score"] for r in selected]
    assert scores == sorted(scores, reverse=True)
    originals = {r["id"]: r for r in read_jsonl(inputs[0])}
    for r in selected:  # the candidate's fields unchanged, plus its score
        assert {k: v for k, v in r.items() if k != "score"} == originals[r["id"]]
    all_scores = read_jsonl(full_run / "scores.jsonl")
    assert [r["id"] for r in all_scores] == list(originals)
    by_id = {r["id"]: r["score"] for r in all_scores}
    assert min(by_id[r["id"]] for r in selected) >= max(v for k, v in by_id.items()
                                                        if k not in {r["id"] for r in selected})
    assert (full_run / "scores.png").stat().st_size > 1000
    report = json.loads((full_run / "report.json").read_text())
    assert report["candidates"] == 60 and report["selected"] == 10 and report["tasks"] == ["add", "add2"]


def test_warmup_checkpoints_hold_adam_moments_and_epoch_lrs(full_run):
    done = json.loads((full_run / "warmup" / "done.json").read_text())
    assert [e["epoch"] for e in done["epochs"]] == [1, 2]
    lrs = [e["mean_lr"] for e in done["epochs"]]
    assert lrs[0] > lrs[1] > 0  # linear decay: the first epoch's mean lr is the larger
    steps = sorted(int(p.name) for p in (full_run / "warmup" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [e["step"] for e in done["epochs"]]
    with np.load(full_run / "warmup" / done["epochs"][1]["file"]) as z:
        n = len(done["paths"])
        assert sorted(z.files) == sorted([f"{c}{i}" for c in "pmv" for i in range(n)])
        assert all(np.any(z[f"m{i}"] != 0) and np.all(z[f"v{i}"] >= 0) for i in range(n))


def test_rerun_recomputes_nothing(full_run, inputs):
    before = (full_run / "scores.jsonl").read_text()
    proc = select(full_run.parent, *inputs)
    assert proc.returncode == 0, proc.stderr
    log = (full_run / "logs" / "process_0.log").read_text().split("stage select")[-1]
    assert "warm-up already done" in log and "'computed': 0" in log and "'computed': 6" not in log
    assert (full_run / "scores.jsonl").read_text() == before


def test_bad_candidate_is_named_with_its_line(tmp_path, inputs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{"id": "b", "input": "q", "output": "a"}\n{"id": "c", "body": "x"}\n')
    proc = select(tmp_path / "run", bad, inputs[1])
    assert proc.returncode == 2
    assert f"{bad}:3" in proc.stderr and "text" in proc.stderr


def test_empty_targets_refused_before_anything_compiles(tmp_path, inputs):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    start = time.monotonic()
    proc = select(tmp_path / "run", inputs[0], empty)
    assert proc.returncode == 2 and "no records" in proc.stderr
    assert not (tmp_path / "run" / "select" / "warmup").exists()
    assert "warm-up" not in (tmp_path / "run" / "select" / "logs" / "process_0.log").read_text()
    assert time.monotonic() - start < 60


# --- resume after SIGKILL, two processes: features are bitwise the same whatever the micro-batch
# size, the process count or the interruption, so these runs use small micro-batches (4 rows, 15 per
# store) and are compared with the uninterrupted single-process run at the default budget ----------

SMALL_BATCHES = ["select.token_budget=256"]


def with_warmup(full_run: Path, run_dir: Path) -> Path:
    """A run dir holding a copy of the finished warm-up (so the features start at once)."""
    (run_dir / "select").mkdir(parents=True)
    shutil.copytree(full_run / "warmup", run_dir / "select" / "warmup")
    return run_dir


def feature_files(stage: Path) -> dict[str, np.ndarray]:
    out = {}
    for meta in sorted(stage.glob("features/*/*/meta.json")):
        info = json.loads(meta.read_text())
        data = np.fromfile(meta.parent / "features.f32", np.float32).reshape(info["count"], info["dim"])
        done = sum(np.fromfile(p, np.uint8).astype(int) for p in meta.parent.glob("done-p*.u8"))
        out[str(meta.parent.relative_to(stage))] = (data, done)
    return out


def test_sigkill_and_rerun_equals_uninterrupted(tmp_path, full_run, inputs):
    run_dir = with_warmup(full_run, tmp_path)
    command = [sys.executable, "-m", "jz3_jax.launch", "select", "--config", "configs/tiny.py", "--run-dir",
               str(run_dir), f"select.candidates={inputs[0]}", f"select.targets={inputs[1]}", *COMMON, *SMALL_BATCHES]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marks = run_dir / "select" / "features" / "epoch_1" / "candidates" / "done-p0.u8"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if marks.exists() and 0 < int(np.fromfile(marks, np.uint8).sum()) < 60:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = int(np.fromfile(marks, np.uint8).sum())
    assert 0 < partial < 60
    rerun = select(run_dir, *inputs, *SMALL_BATCHES)
    assert rerun.returncode == 0, rerun.stderr
    log = (run_dir / "select" / "logs" / "process_0.log").read_text().split("stage select")[-1]
    assert f"'computed': {60 - partial}, 'skipped_done': {partial}" in log
    got, want = feature_files(run_dir / "select"), feature_files(full_run)
    assert sorted(got) == sorted(want) and len(got) == 4
    for name in want:
        assert np.array_equal(got[name][1], np.ones_like(want[name][1])), name  # every row exactly once
        np.testing.assert_array_equal(got[name][0], want[name][0])
    assert (run_dir / "select" / "scores.jsonl").read_text() == (full_run / "scores.jsonl").read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def select_two_processes(run_dir: Path, inputs, *extra: str) -> None:
    """`select` as two launcher processes of one job under `jax.distributed` (the Pod pattern of
    tests/test_pods.py); both must exit 0."""
    port = _free_port()
    procs = []
    for pid in range(2):
        command = [sys.executable, "-m", "jz3_jax.launch", "select", "--config", "configs/tiny.py", "--run-dir",
                   str(run_dir), f"select.candidates={inputs[0]}", f"select.targets={inputs[1]}", *COMMON, *extra,
                   *SMALL_BATCHES, f"distributed.coordinator_address=127.0.0.1:{port}", "distributed.num_processes=2",
                   f"distributed.process_id={pid}"]
        procs.append(subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(devices=1),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        errors = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], errors


def test_two_processes_fill_one_store_and_score_like_one(tmp_path, full_run, inputs):
    run_dir = with_warmup(full_run, tmp_path)
    select_two_processes(run_dir, inputs)
    stage = run_dir / "select"
    for name, (data, _) in feature_files(stage).items():
        info = json.loads((stage / name / "meta.json").read_text())
        per_process = [np.fromfile(stage / name / f"done-p{p}.u8", np.uint8) for p in (0, 1)]
        assert per_process[0].sum() + per_process[1].sum() == info["count"]  # each row by exactly one process
        assert per_process[0].sum() > 0 and per_process[1].sum() > 0
    got, want = feature_files(stage), feature_files(full_run)
    for name in want:
        np.testing.assert_array_equal(got[name][0], want[name][0])
    assert (stage / "scores.jsonl").read_text() == (full_run / "scores.jsonl").read_text()


# --- select.gradients=logra (one backward pass, Kronecker-projected taps) on the same warm-up -----

LOGRA = ["select.gradients=logra"]


@pytest.fixture(scope="module")
def logra_run(tmp_path_factory, full_run, inputs) -> Path:
    run_dir = with_warmup(full_run, tmp_path_factory.mktemp("select_logra"))
    proc = select(run_dir, *inputs, *LOGRA, *SMALL_BATCHES)
    assert proc.returncode == 0, proc.stderr
    return run_dir / "select"


def test_logra_top_k_come_from_the_matching_distribution(logra_run):
    selected = read_jsonl(logra_run / "selected.jsonl")
    precision = sum(r["id"].startswith("math") for r in selected) / len(selected)
    assert len(selected) == 10 and precision >= 0.9, [r["id"] for r in selected]
    report = json.loads((logra_run / "report.json").read_text())
    assert report["gradients"] == "logra" and report["projection"] == "logra"
    meta = json.loads((logra_run / "features" / "epoch_1" / "candidates" / "meta.json").read_text())
    assert meta["fingerprint"]["precondition"] == "factored" and meta["dim"] == report["proj_dim"] <= 256


def test_logra_two_processes_fill_one_store_and_score_like_one(tmp_path, full_run, logra_run, inputs):
    run_dir = with_warmup(full_run, tmp_path)
    select_two_processes(run_dir, inputs, *LOGRA)
    stage = run_dir / "select"
    got, want = feature_files(stage), feature_files(logra_run)
    assert sorted(got) == sorted(want) and len(got) == 4
    for name in want:
        per_process = [np.fromfile(stage / name / f"done-p{p}.u8", np.uint8) for p in (0, 1)]
        assert per_process[0].sum() > 0 and per_process[1].sum() > 0
        assert np.array_equal(per_process[0] + per_process[1], np.ones_like(per_process[0]))
        np.testing.assert_array_equal(got[name][0], want[name][0])
    assert (stage / "scores.jsonl").read_text() == (logra_run / "scores.jsonl").read_text()
