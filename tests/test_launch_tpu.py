"""launch/tpu.py --dry-run: the gcloud commands for a Cloud TPU slice, printed, nothing run."""

from __future__ import annotations

import shlex
import subprocess
import sys

from helpers import REPO_ROOT, subprocess_env

SCRIPT = str(REPO_ROOT / "launch" / "tpu.py")
SLICE = ["--name", "jz3", "--zone", "us-central2-b", "--accelerator", "v4-32", "--bucket", "gs://bkt/runs"]


def dry(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=subprocess_env(extra={"PATH": "/nonexistent"}), timeout=300)  # no gcloud reachable
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.strip()]


def gcloud(lines: list[str], *words: str) -> list[list[str]]:
    """The printed gcloud commands whose words start with `words`."""
    parsed = [shlex.split(line) for line in lines if line.startswith("gcloud ")]
    return [p for p in parsed if p[1:1 + len(words)] == list(words)]


def test_up_on_a_v4_32_slice_creates_installs_runs_on_all_4_workers_collects_and_deletes():
    lines = dry("up", *SLICE, "--", "pipeline", "--config", "configs/demo.py", "pipeline.boost=false")
    assert lines[0] == "# jz3: v4-32, 4 worker(s)"
    (create,) = gcloud(lines, "compute", "tpus", "tpu-vm", "create")
    assert create[5:] == ["jz3", "--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    ssh = gcloud(lines, "compute", "tpus", "tpu-vm", "ssh")
    assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
    install, run = (c[-1].removeprefix("--command=") for c in ssh)
    assert "pip install -q -e '.[tpu]'" in install
    assert ("jz3_jax.launch pipeline --config configs/demo.py pipeline.boost=false --run-dir gs://bkt/runs/jz3 "
            "distributed.enabled=true") in run
    assert "agent-worker-number" in run and "tee ~/jz3_logs/run.log" in run  # streamed per worker, and kept
    scp = gcloud(lines, "compute", "tpus", "tpu-vm", "scp")
    assert "--worker=all" in scp[0]  # the source to every worker
    collected = [c for c in scp[1:] if "--recurse" in c]
    assert sorted({c[-1] for c in collected}) == [f"--worker={w}" for w in range(4)]
    assert any("runs/tpu_logs/jz3/worker_3" in c for c in collected)
    (delete,) = gcloud(lines, "compute", "tpus", "tpu-vm", "delete")
    assert delete[5] == "jz3" and lines.index(shlex.join(delete)) == len(lines) - 2  # deleted last


def test_spot_and_reserved_go_through_a_queued_resource():
    for flag in ("--spot", "--reserved"):
        lines = dry("create", *SLICE, flag)
        (create,) = gcloud(lines, "alpha", "compute", "tpus", "queued-resources", "create")
        assert flag in create and "--node-id=jz3" in create and "--runtime-version=tpu-ubuntu2204-base" in create
        assert any("queued-resources describe" in line and "state.state" in line for line in lines)
        (delete,) = gcloud(dry("delete", *SLICE, flag), "alpha", "compute", "tpus", "queued-resources", "delete")
        assert "--force" in delete


def test_worker_counts_by_generation():
    sys.path.insert(0, str(REPO_ROOT / "launch"))
    import tpu

    assert [tpu.workers_of(a) for a in ("v4-8", "v4-32", "v5p-64", "v5litepod-8", "v5litepod-16", "v6e-32",
                                        "v3-32")] == [1, 4, 8, 1, 4, 8, 4]


def test_sweep_prints_one_run_command_per_run_on_one_slice():
    lines = dry("sweep", *SLICE, "--sweep-file", "configs/ablations/selection.py", "--",
                "pipeline", "--config", "configs/tiny.py")
    runs = [c[-1] for c in gcloud(lines, "compute", "tpus", "tpu-vm", "ssh") if "jz3_jax.launch" in c[-1]]
    assert len(runs) == 3
    for run, override in zip(runs, ["pipeline.boost=false", "select.method=random", "select.method=influence"]):
        assert f"--run-dir gs://bkt/runs/jz3/{override} " in run and f" {override} " in run
        assert "distributed.enabled=true" in run
    assert len(gcloud(lines, "compute", "tpus", "tpu-vm", "create")) == 1
    assert len(gcloud(lines, "compute", "tpus", "tpu-vm", "delete")) == 1
