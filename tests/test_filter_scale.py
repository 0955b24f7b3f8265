"""`filter` at scale: planted removals found with their reasons, the same outputs with one and two
processes (through the launcher, under `jax.distributed`), bounded bucket verification, and (slow)
growth of memory and time with the input size.

The data is generated in tmp_path (`filter_data.py`): completions of about 2,400 characters with
planted exact duplicates, near duplicates, contaminated, truncated and malformed records, and
templated families of similar problems that must all be kept.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from filter_data import eval_dir, planted, templated
from helpers import REPO_ROOT, subprocess_env
from jz3_jax.stages.registry import StageContext
from jz3_jax.synth.config import FilterConfig
from jz3_jax.synth.dedup import capped_pairs
from jz3_jax.synth.filter_stage import run
from jz3_jax.synth.spec import FilterSpec

TIMING = ("seconds", "records_per_second", "phase_seconds", "peak_rss_mb", "processes")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_direct(run_dir: Path, **kwargs) -> dict:
    ctx = StageContext("filter", run_dir / "filter", logging.getLogger("jz3_jax.test_filter_scale"))
    return run(FilterSpec(FilterConfig(**kwargs)), ctx)


def removed_by_id(stage_dir: Path) -> dict[str, dict]:
    return {r["id"]: {k: r[k] for k in ("reason", "duplicate_of") if k in r}
            for r in read_jsonl(stage_dir / "removed.jsonl")}


def launch_pod(run_dir: Path, overrides: list[str], processes: int = 2, timeout: float = 300):
    """Run `filter` as `processes` launcher processes of one jax.distributed job; (codes, stderrs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "jz3_jax.launch", "filter", "--config", "configs/tiny.py", "--run-dir", str(run_dir),
         *overrides, f"distributed.coordinator_address=127.0.0.1:{port}", f"distributed.num_processes={processes}",
         f"distributed.process_id={pid}"],
        cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for pid in range(processes)]
    try:
        stderr = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], stderr


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory) -> tuple[Path, Path, dict]:
    """1,500 planted completions in two shards (byte ranges of two processes cross the file boundary)."""
    root = tmp_path_factory.mktemp("planted")
    evals, questions = eval_dir(root / "eval")
    expected = planted(root / "all.jsonl", 1500, questions, seed=3)
    lines = (root / "all.jsonl").read_text().splitlines(keepends=True)
    (root / "in").mkdir()
    (root / "in" / "shard-0.jsonl").write_text("".join(lines[:400]))
    (root / "in" / "shard-1.jsonl").write_text("\n" + "".join(lines[400:]))  # a blank line is not a record
    return root / "in", evals, expected


def test_planted_removals_have_their_reasons_and_nothing_else_goes(tmp_path, planted_data):
    inputs, evals, expected = planted_data
    # rows_per_pass=50: several partitions per pass and several passes over the spools.
    report = run_direct(tmp_path, inputs=str(inputs), eval_dir=str(evals), rows_per_pass=50)
    assert removed_by_id(tmp_path / "filter") == expected
    reasons = [v["reason"] for v in expected.values()]
    assert report["removed"] == {r: reasons.count(r) for r in report["removed"]}
    assert all(reasons.count(r) > 0 for r in report["removed"])
    assert report["read"] == 1500 and report["kept"] == 1500 - len(expected)
    kept = [r["id"] for r in read_jsonl(tmp_path / "filter" / "records.jsonl")]
    assert kept == [f"r{i}" for i in range(1500) if f"r{i}" not in expected]  # record order
    near = [r for r in read_jsonl(tmp_path / "filter" / "removed.jsonl") if r["reason"] == "near_duplicate"]
    assert all(0.8 <= r["jaccard"] < 1.0 for r in near)
    assert sorted(p.name for p in (tmp_path / "filter").iterdir()) == ["records.jsonl", "removed.jsonl", "report.json"]
    # One pass in memory finds the same.
    one_pass = run_direct(tmp_path / "again", inputs=str(inputs), eval_dir=str(evals))
    for name in ("records.jsonl", "removed.jsonl"):
        assert (tmp_path / "again" / "filter" / name).read_bytes() == (tmp_path / "filter" / name).read_bytes()
    assert one_pass["outputs"] == report["outputs"]


def test_two_processes_write_what_one_writes(tmp_path, planted_data):
    inputs, evals, expected = planted_data
    common = [f"filter.inputs={inputs}", f"filter.eval_dir={evals}", "filter.rows_per_pass=50"]
    one = run_direct(tmp_path / "one", inputs=str(inputs), eval_dir=str(evals), rows_per_pass=50)
    codes, stderr = launch_pod(tmp_path / "two", common)
    assert codes == [0, 0], stderr
    two = json.loads((tmp_path / "two" / "filter" / "report.json").read_text())
    for name in ("records.jsonl", "removed.jsonl"):
        assert (tmp_path / "two" / "filter" / name).read_bytes() == (tmp_path / "one" / "filter" / name).read_bytes()
    assert two["processes"] == 2 and one["processes"] == 1
    assert {k: v for k, v in two.items() if k not in TIMING} == {k: v for k, v in one.items() if k not in TIMING}
    assert removed_by_id(tmp_path / "two" / "filter") == expected
    for process in (0, 1):  # both processes read a share of the records
        log = (tmp_path / "two" / "filter" / "logs" / f"process_{process}.log").read_text()
        assert f"filter: process {process} read " in log
    assert not (tmp_path / "two" / "filter" / ".work").exists()


def test_a_bad_line_in_the_second_process_share_stops_both(tmp_path, planted_data):
    inputs, evals, _ = planted_data
    bad = tmp_path / "in"
    bad.mkdir()
    for shard in sorted(inputs.iterdir()):
        (bad / shard.name).write_text(shard.read_text())
    with (bad / "shard-1.jsonl").open("a") as f:
        f.write("{not json\n")
    codes, stderr = launch_pod(tmp_path, [f"filter.inputs={bad}", f"filter.eval_dir={evals}"])
    assert codes == [2, 2], stderr
    lines = len((bad / "shard-1.jsonl").read_text().splitlines())
    assert any(f"shard-1.jsonl:{lines}: not valid JSON" in text for text in stderr), stderr
    assert not (tmp_path / "filter" / "records.jsonl").exists()
    assert not (tmp_path / "filter" / ".work").exists()


def test_templated_families_are_kept_and_their_near_duplicates_found_with_capped_verification(tmp_path):
    templated(tmp_path / "t.jsonl", 800, families=4)
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    # At the end (out of reach of the window of nearest members), copies of early and late members
    # with one of their three numbers changed: near duplicates of that member only.
    sources = [3, 50, 222, 404, 640, 777, 799, 7, 99, 310, 555, 612, 702, 798]
    for k, m in enumerate(sources):
        row = json.loads(lines[m])
        number = re.findall(r"\b\d{2,}\b", row["completion"].split("## Solution")[0])[0]
        row["id"], row["completion"] = f"near{k}", row["completion"].replace(number, str(5_000_000 + k), 1)
        lines.append(json.dumps(row))
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    report = run_direct(tmp_path, inputs=str(tmp_path / "t.jsonl"), decontaminate=False, bucket_cap=4)
    assert report["kept"] == 800
    assert removed_by_id(tmp_path / "filter") == {
        f"near{k}": {"reason": "near_duplicate", "duplicate_of": f"t{m}"} for k, m in enumerate(sources)}
    # 200 members a family: without the cap, a member would be checked against every earlier member
    # it shares a band with; with it, against at most 4 per band.
    dedup = report["dedup"]
    assert 0 < dedup["candidate_pairs"] <= len(lines) * 4 * report["settings"]["lsh_bands"]
    uncapped = run_direct(tmp_path / "uncapped", inputs=str(tmp_path / "t.jsonl"), decontaminate=False,
                          bucket_cap=len(lines))
    assert uncapped["kept"] == 800 and uncapped["dedup"]["candidate_pairs"] > 3 * dedup["candidate_pairs"]
    assert removed_by_id(tmp_path / "uncapped" / "filter") == removed_by_id(tmp_path / "filter")


def test_bucket_cap_picks_the_first_and_the_nearest_earlier_members():
    # One bucket of 7 members (ids 10..70 in record order), a singleton, and a bucket of 3.
    keys = np.array([5] * 7 + [6] + [9] * 3, np.uint64)
    idx = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110])
    pairs = sorted((int(a), int(b)) for i, j in capped_pairs(keys, idx, 4) for a, b in zip(i, j))
    candidates = {b: [a for a, c in pairs if c == b] for _, b in pairs}
    # cap 4: the bucket's first 2 members and the 2 just before.
    assert candidates[70] == [10, 20, 50, 60]
    assert candidates[50] == [10, 20, 30, 40]
    assert candidates[30] == [10, 20]
    assert candidates[110] == [90, 100]
    assert 80 not in candidates
    # The choice depends on record order only: shuffling the rows of a bucket gives the same pairs.
    order = np.lexsort((idx[::-1], keys[::-1]))
    again = sorted((int(a), int(b)) for i, j in capped_pairs(keys[::-1][order], idx[::-1][order], 4)
                   for a, b in zip(i, j))
    assert again == pairs


# --- growth (slow) ------------------------------------------------------------------------------

MEASURE = """
import json, logging, sys
from jz3_jax.stages.registry import StageContext
from jz3_jax.synth.config import FilterConfig
from jz3_jax.synth.filter_stage import peak_rss_mb, run
from jz3_jax.synth.spec import FilterSpec
run_dir, kwargs = sys.argv[1], json.loads(sys.argv[2])
ctx = StageContext("filter", __import__("pathlib").Path(run_dir) / "filter", logging.getLogger("measure"))
report = run(FilterSpec(FilterConfig(**kwargs)), ctx)
print(json.dumps({"report": report, "peak_rss_mb": peak_rss_mb()}))
"""


def measured(run_dir: Path, **kwargs) -> tuple[dict, float]:
    """(report, peak RSS in MB) of the stage run alone in a fresh interpreter (one process); the peak is
    the child's own high-water mark (`ru_maxrss` would include this test process's memory)."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(run_dir), json.dumps(kwargs)], cwd=REPO_ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    return result["report"], result["peak_rss_mb"]


@pytest.mark.slow
def test_memory_stays_flat_from_40k_to_160k_and_every_planted_record_goes(tmp_path):
    evals, questions = eval_dir(tmp_path / "eval")
    rss, seconds = {}, {}
    for n in (40_000, 160_000):
        data = tmp_path / f"c{n}.jsonl"
        expected = planted(data, n, questions, seed=n)
        report, rss[n] = measured(tmp_path / f"run{n}", inputs=str(data), eval_dir=str(evals))
        seconds[n] = report["seconds"]
        assert removed_by_id(tmp_path / f"run{n}" / "filter") == expected
        assert report["kept"] == n - len(expected)
        if n == 40_000:  # the same outputs with two processes
            codes, stderr = launch_pod(tmp_path / "pod", [f"filter.inputs={data}", f"filter.eval_dir={evals}"],
                                       timeout=1800)
            assert codes == [0, 0], stderr
            for name in ("records.jsonl", "removed.jsonl"):
                assert (tmp_path / "pod" / "filter" / name).read_bytes() == \
                    (tmp_path / f"run{n}" / "filter" / name).read_bytes()
            pod = json.loads((tmp_path / "pod" / "filter" / "report.json").read_text())
            print(f"filter 40k with 2 processes: {pod['seconds']} s")
        (tmp_path / f"run{n}" / "filter" / "records.jsonl").unlink()
        data.unlink()
    print(f"filter planted: peak RSS {rss} MB, seconds {seconds}")
    assert rss[160_000] <= 1.3 * rss[40_000]


@pytest.mark.slow
def test_templated_problems_take_near_linear_time(tmp_path):
    seconds = {}
    for n in (10_000, 80_000):
        templated(tmp_path / f"t{n}.jsonl", n)
        report, _ = measured(tmp_path / f"run{n}", inputs=str(tmp_path / f"t{n}.jsonl"), decontaminate=False)
        assert report["kept"] == n
        seconds[n] = report["seconds"]
    print(f"filter templated: seconds {seconds}")
    assert seconds[80_000] <= 10 * seconds[10_000]
