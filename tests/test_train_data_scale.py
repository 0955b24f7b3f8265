"""`pretrain` start-up at growing data sizes (issue 28): launch to the first logged step at 400k records
takes at most 1.5x that at 100k (model init and compile included), both for a first launch (which
builds the data index) and for a later one (index in place), and a resume builds no index part (no
counting pass).

Slow (about 6 minutes on 2 cores): the records (~600 bytes each, 60 and 240 MB) are generated in the
test's temp dir, indexed alone once (`TokenIndex.build_share`, timed), then `pretrain` is launched on
each with a new index directory (cold), again as a new run (warm), and at 400k resumed. Fast tests of
the same logic are in test_data.py and test_trainer.py.

The README's figures: `python tests/test_train_data_scale.py DIR RECORDS [REPO]` writes RECORDS
records under DIR and prints one JSON line of seconds to the first logged step: `first` (a new run,
which builds the index in a new directory), `resume` (the same run relaunched after step 1) and `later` (a new run on
the same index); with REPO (another checkout, e.g. the version before) `first` and `resume` only.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow

WORDS = ["alpha", "beta", "gamma", "delta", "number", "sum", "prove", "let", "integer", "equation", "the", "of",
         "and", "x", "y", "=", "+", "2", "17", "\\frac{1}{2}"]


def write_records(path: Path, n: int) -> Path:
    """`n` records: an input of 5-25 words after "Problem i:", an output of 40-160 words (~600 bytes in all)."""
    rng = random.Random(n)
    with path.open("w") as f:
        for i in range(n):
            prompt = f"Problem {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25)))
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 160)))
            f.write(json.dumps({"input": prompt, "output": answer}) + "\n")
    return path


def build_index(data: Path, index_dir: Path) -> float:
    """Seconds to index `data` for the tiny config's tokenizer (what a first launch does before step 1)."""
    from jz3_jax.data import TokenIndex, list_files
    from jz3_jax.tokenizer import load_tokenizer

    start = time.perf_counter()
    index = TokenIndex(index_dir, load_tokenizer("bytes"))
    index.build_share(list_files(str(data)), split="train", bad_records="error", part=0, parts=1)
    assert index.built > 0
    return time.perf_counter() - start


def first_step_seconds(run_dir: Path, data: Path, index_dir: Path | None, step: int = 1,
                       repo: Path = REPO_ROOT) -> tuple[float, str]:
    """(seconds from launch to the logged `step`, the run's log); the process is killed once the
    checkpoint of that step is written. `repo`: the checkout to run (None `index_dir`: its default)."""
    args = [sys.executable, "-m", "jz3_jax.launch", "pretrain", "--config", "configs/tiny.py", "--run-dir",
            str(run_dir), f"data.train_path={data}", "train.steps=0", "train.epochs=1", "data.pack=true",
            "data.max_length=2048", "train.global_batch_size=8", "train.log_every=1", "train.checkpoint_every=1",
            "train.export_hf=false", *([f"data.index_dir={index_dir}"] if index_dir else [])]
    env = subprocess_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # every launch compiles, as a new run would
    metrics = run_dir / "pretrain" / "metrics.jsonl"
    checkpoint = run_dir / "pretrain" / "checkpoints" / str(step)
    start = time.monotonic()
    process = subprocess.Popen(args, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    seconds = None
    try:
        while not checkpoint.is_dir():
            if seconds is None and metrics.exists() and any(
                    json.loads(line)["step"] >= step for line in metrics.read_text().splitlines() if line.strip()):
                seconds = time.monotonic() - start
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() - start < 900, "timed out"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return seconds, (run_dir / "pretrain" / "logs" / "process_0.log").read_text()


def test_start_up_does_not_grow_with_the_records(tmp_path):
    figures = {}
    for n in (100_000, 400_000):
        data = write_records(tmp_path / f"records_{n}.jsonl", n)
        figures[f"index_{n}"] = build_index(data, tmp_path / f"index_only_{n}")  # the index build alone
        index_dir = tmp_path / f"index_{n}"
        run_dir = tmp_path / f"run_{n}"
        figures[f"cold_{n}"], log = first_step_seconds(run_dir, data, index_dir)  # builds the index
        assert "data index:" in log and f"data: {n} training records" in log
        parts = {p: p.stat().st_mtime_ns for p in index_dir.rglob("*.npz")}
        figures[f"warm_{n}"], log = first_step_seconds(tmp_path / f"run_{n}_later", data, index_dir)
        assert "data index:" not in log and f"data: {n} training records" in log
        if n == 400_000:
            later = tmp_path / f"run_{n}_later"  # its log holds no index build of its own first launch
            figures["resume_400000"], log = first_step_seconds(later, data, index_dir, step=2)
            assert "resumed from checkpoint at step 1" in log and "data index:" not in log  # no part built
        assert {p: p.stat().st_mtime_ns for p in index_dir.rglob("*.npz")} == parts
        data.unlink()
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}))
    assert figures["cold_400000"] <= 1.5 * figures["cold_100000"], figures
    assert figures["warm_400000"] <= 1.5 * figures["warm_100000"], figures


def measure(directory: Path, records: int, repo: Path | None = None) -> dict:
    """The README's figures for one size (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"records_{records}.jsonl"
    if not data.exists():
        write_records(data, records)
    stamp = time.strftime("%H%M%S")
    index_dir = None if repo else directory / f"index_{records}_{stamp}"  # new: `first` builds it
    run = directory / f"run_{records}_{stamp}"
    figures = {"records": records, "repo": str(repo or REPO_ROOT)}
    figures["first"] = first_step_seconds(run, data, index_dir, 1, repo or REPO_ROOT)[0]
    figures["resume"] = first_step_seconds(run, data, index_dir, 2, repo or REPO_ROOT)[0]
    if not repo:
        figures["later"] = first_step_seconds(directory / f"run_{records}_{stamp}_later", data, index_dir)[0]
    return figures


if __name__ == "__main__":
    where, count = Path(sys.argv[1]), int(sys.argv[2])
    print(json.dumps(measure(where, count, Path(sys.argv[3]).resolve() if len(sys.argv) > 3 else None)))
