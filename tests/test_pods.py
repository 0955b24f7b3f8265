"""Stages run the way a pod runs them: two processes under `jax.distributed`, 4 forced CPU devices
each, started through the launcher, killed, preempted and relaunched with the same command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO_ROOT, subprocess_env

TIMEOUT_S = 300
PROMPT_FAILURE_S = 60  # the bound: every process exits within this after one fails


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pod:
    """Two launcher processes of one `jax.distributed` job (a fresh coordinator port per launch)."""

    def __init__(self, stage: str, run_dirs: list[Path], *overrides: str, env: dict[str, str] | None = None):
        self.stage, self.run_dirs, self.overrides, self.env = stage, run_dirs, overrides, env
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "Pod":
        port = _free_port()
        self.procs = []
        for pid, run_dir in enumerate(self.run_dirs):
            command = [sys.executable, "-m", "jz3_jax.launch", self.stage, "--config", "configs/tiny.py",
                       "--run-dir", str(run_dir), *self.overrides,
                       f"distributed.coordinator_address=127.0.0.1:{port}", "distributed.num_processes=2",
                       f"distributed.process_id={pid}"]
            self.procs.append(subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(devices=4, extra=self.env),
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        self.started = time.monotonic()
        return self

    def wait(self, timeout: float = TIMEOUT_S) -> tuple[list[int], list[str], float]:
        """(exit codes, stderr texts, seconds from start to the last exit); kills both on timeout."""
        deadline = self.started + timeout
        stderr = []
        try:
            for proc in self.procs:
                stderr.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[1])
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the two processes did not finish within {timeout} s")
        return [p.returncode for p in self.procs], stderr, time.monotonic() - self.started

    def signal(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


def wait_until(predicate, pod: Pod, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not pod.alive():
            codes, stderr, _ = pod.wait()
            pytest.fail(f"a process exited early ({codes}):\n" + "\n".join(stderr))
        if time.monotonic() > deadline:
            pod.kill()
            pytest.fail("timed out")
        time.sleep(0.05)


def checkpoint_steps(stage_dir: Path) -> set[int]:
    directory = stage_dir / "checkpoints"
    return {int(p.name) for p in directory.iterdir() if p.name.isdigit()} if directory.is_dir() else set()


def metrics(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses(stage_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(stage_dir)}


def log_text(stage_dir: Path, process: int) -> str:
    return (stage_dir / "logs" / f"process_{process}.log").read_text()


def training_steps(stage_dir: Path, process: int) -> int:
    line = next(line for line in log_text(stage_dir, process).splitlines() if "INFO training " in line)
    return int(line.split("INFO training ")[1].split()[0])


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> Path:
    """96 records of mixed lengths (byte-tokenized: 10 to 40 tokens), packed several to a row."""
    path = tmp_path_factory.mktemp("data") / "varied.jsonl"
    with path.open("w") as f:
        for i in range(96):
            a, b = (7 * i) % 50, (13 * i) % 40
            f.write(json.dumps({"input": f"Q{i}: {a}+{b}=?" + " " * (i % 23), "output": f"{a + b}"}) + "\n")
    return path


PACKED = ["data.max_length=64", "data.pack=true", "train.global_batch_size=8", "train.steps=0", "train.epochs=2",
          "train.checkpoint_every=3", "train.export_hf=false", "optimizer.lr=3e-3", "mesh.data=2", "mesh.fsdp=2",
          "mesh.tensor=2"]


@pytest.fixture(scope="module")
def uninterrupted_pod(tmp_path_factory, varied) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("pod_full")
    codes, stderr, _ = Pod("pretrain", [run_dir, run_dir], f"data.train_path={varied}", *PACKED).start().wait()
    assert codes == [0, 0], stderr
    values = losses(run_dir / "pretrain")
    steps = training_steps(run_dir / "pretrain", 0)
    assert steps == training_steps(run_dir / "pretrain", 1)
    assert sorted(values) == list(range(1, steps + 1))
    assert steps > 6
    return values


def test_packed_epochs_sigkill_and_relaunch_equals_uninterrupted(tmp_path, varied, uninterrupted_pod):
    stage_dir = tmp_path / "pretrain"
    pod = Pod("pretrain", [tmp_path, tmp_path], f"data.train_path={varied}", *PACKED).start()
    wait_until(lambda: 3 in checkpoint_steps(stage_dir), pod)
    pod.kill()
    latest = max(checkpoint_steps(stage_dir))
    assert latest < max(uninterrupted_pod)
    # each process restores its own position in its own share of the data
    assert sorted(p.name for p in (stage_dir / "checkpoints" / str(latest) / "data").glob("process_*.json")) == \
        ["process_0-of-2.json", "process_1-of-2.json"]
    codes, stderr, _ = pod.start().wait()
    assert codes == [0, 0], stderr
    for process in (0, 1):
        assert f"resumed from checkpoint at step {latest}" in log_text(stage_dir, process)
    resumed = losses(stage_dir)
    assert sorted(resumed) == sorted(uninterrupted_pod)  # no step lost or logged twice
    for step, loss in uninterrupted_pod.items():
        assert resumed[step] == pytest.approx(loss, abs=1e-5), step


def test_shares_that_pack_differently_run_the_same_steps(tmp_path):
    """Process 0's blocks of records are short (many per row), process 1's long (one per row)."""
    from jz3_jax.data import TrainData, read_records
    from jz3_jax.tokenizer import load_tokenizer
    from jz3_jax.config import load_config

    data = tmp_path / "uneven.jsonl"
    rows_per_process = 4
    with data.open("w") as f:
        for i in range(64):
            long = (i // rows_per_process) % 2 == 1  # blocks of 4 records alternate between the processes
            f.write(json.dumps({"input": ("x" * 50 if long else "q") + f"{i}?", "output": "y"}) + "\n")
    common = ["data.max_length=64", "data.pack=true", "data.shuffle=false", "train.global_batch_size=8",
              "train.steps=0", "train.epochs=1", "train.checkpoint_every=100", "train.export_hf=false",
              "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    codes, stderr, _ = Pod("pretrain", [tmp_path, tmp_path], f"data.train_path={data}", *common).start().wait()
    assert codes == [0, 0], stderr
    stage_dir = tmp_path / "pretrain"
    steps = training_steps(stage_dir, 0)
    assert training_steps(stage_dir, 1) == steps
    assert max(losses(stage_dir)) == steps
    # what each process would have guessed from its own share (rows x processes / batch) differs
    tokenizer = load_tokenizer(load_config(REPO_ROOT / "configs" / "tiny.py").model.tokenizer)
    shares = [TrainData(read_records(str(data)), tokenizer, max_length=64, rows_per_batch=rows_per_process,
                        pack=True, train_on_input=False, seed=0, shuffle=False, process_index=i,
                        process_count=2).rows_per_epoch() for i in range(2)]
    assert shares[1] > 2 * shares[0]
    assert steps == -(-sum(shares) // 8)
    guesses = {-(-rows * 2 // 8) for rows in shares}
    assert len(guesses) == 2 and steps not in guesses


def test_different_local_run_dirs_exit_2_with_the_shared_storage_message(tmp_path, varied):
    pod = Pod("pretrain", [tmp_path / "host0", tmp_path / "host1"], f"data.train_path={varied}", *PACKED)
    codes, stderr, seconds = pod.start().wait()
    assert codes == [2, 2], stderr
    assert seconds < PROMPT_FAILURE_S
    for text in stderr:
        assert "must be storage every host sees" in text and "run_dir" in text


def test_each_process_exits_with_its_own_code_when_process_0_leaves_first(tmp_path, varied):
    """Process 1 pauses right before its exit (as a process descheduled on a loaded machine does), so
    process 0, which hosts the coordination service, is gone first; process 1 still exits with 2, not
    SIGABRT from losing the service (seen once under load before every process left through jax's
    shutdown)."""
    from jz3_jax.runtime.peers import TEST_EXIT_DELAY_ENV

    pod = Pod("pretrain", [tmp_path / "host0", tmp_path / "host1"], f"data.train_path={varied}", *PACKED,
              env={TEST_EXIT_DELAY_ENV: "2"})
    codes, stderr, seconds = pod.start().wait()
    assert codes == [2, 2], stderr
    assert seconds < PROMPT_FAILURE_S


def test_malformed_record_in_process_1_share_stops_both(tmp_path, varied):
    lines = varied.read_text().splitlines()
    lines[5] = '{"input": "Q: 1+1=?", "output": '  # record 5 is in process 1's first block (4..7)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    codes, stderr, seconds = Pod("pretrain", [tmp_path, tmp_path], f"data.train_path={bad}", *PACKED).start().wait()
    assert all(code != 0 for code in codes), stderr
    assert seconds < PROMPT_FAILURE_S
    assert "bad.jsonl" in stderr[0] and "bad.jsonl:6" in stderr[0]


def test_a_process_killed_mid_run_stops_the_other(tmp_path, varied):
    long_run = [*PACKED, "train.epochs=200"]
    pod = Pod("pretrain", [tmp_path, tmp_path], f"data.train_path={varied}", *long_run).start()
    wait_until(lambda: 3 in checkpoint_steps(tmp_path / "pretrain"), pod)
    killed = time.monotonic()
    pod.procs[1].send_signal(signal.SIGKILL)
    try:
        pod.procs[0].wait(timeout=PROMPT_FAILURE_S)
    except subprocess.TimeoutExpired:
        pod.kill()
        pytest.fail(f"process 0 still runs {PROMPT_FAILURE_S} s after process 1 was killed")
    assert pod.procs[0].returncode != 0
    assert time.monotonic() - killed < PROMPT_FAILURE_S
    pod.kill()


def test_sigterm_checkpoints_both_at_one_step_and_the_rerun_resumes(tmp_path, varied):
    stage_dir = tmp_path / "pretrain"
    long_run = [o for o in PACKED if not o.startswith("train.checkpoint_every")] + [
        "train.epochs=200", "train.checkpoint_every=100000", "train.sync_every=2"]
    pod = Pod("pretrain", [tmp_path, tmp_path], f"data.train_path={varied}", *long_run).start()
    wait_until(lambda: (stage_dir / "metrics.jsonl").exists() and len(metrics(stage_dir)) >= 10, pod)
    pod.signal(signal.SIGTERM)
    codes, stderr, _ = pod.wait()
    assert codes == [143, 143], stderr
    saved = checkpoint_steps(stage_dir)
    assert len(saved) == 1
    step = saved.pop()
    assert step % 2 == 0  # the processes agree every sync_every steps
    for process in (0, 1):
        assert f"SIGTERM: checkpoint saved at step {step}" in log_text(stage_dir, process)
    assert max(losses(stage_dir)) == step
    rerun = [o for o in long_run if not o.startswith("train.epochs")] + [f"train.steps={step + 2}"]
    codes, stderr, _ = Pod("pretrain", [tmp_path, tmp_path], f"data.train_path={varied}", *rerun).start().wait()
    assert codes == [0, 0], stderr
    for process in (0, 1):
        assert f"resumed from checkpoint at step {step}" in log_text(stage_dir, process)
    assert sorted(losses(stage_dir)) == list(range(1, step + 3))


def test_two_process_synthesize_then_filter_sees_every_prompt_once(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    ids = [f"p{i}" for i in range(11)]
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"Write problem {i}."}) + "\n" for i in ids))
    common = [f"synthesize.prompts={prompts}", "synthesize.shard_size=2", "sampling.max_new_tokens=8",
              "engine.max_batch=4", "engine.max_seq_len=64"]
    codes, stderr, _ = Pod("synthesize", [tmp_path, tmp_path], *common).start().wait()
    assert codes == [0, 0], stderr
    shards = sorted((tmp_path / "synthesize" / "completions").glob("part-*.jsonl"))
    assert {p.name.split("-")[1] for p in shards} == {"00000", "00001"}  # both processes wrote shards
    # filter.inputs= : the run dir's synthesize shards (configs/tiny.py points filter at shipped data)
    codes, stderr, _ = Pod("filter", [tmp_path, tmp_path], "filter.inputs=", "filter.decontaminate=false").start().wait()
    assert codes == [0, 0], stderr
    report = json.loads((tmp_path / "filter" / "report.json").read_text())
    assert report["read"] == len(ids)
    out = [json.loads(line)["id"] for name in ("records.jsonl", "removed.jsonl")
           for line in (tmp_path / "filter" / name).read_text().splitlines() if line.strip()]
    assert sorted(out) == sorted(ids)
