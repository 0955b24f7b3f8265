"""The `synthesize` stage: completion shards, exactly-once resume, process slices, bad prompts."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from helpers import REPO_ROOT, subprocess_env
from jz3_jax.synth.completions import iter_completions, resolve_inputs
from jz3_jax.errors import SynthesizeError
from jz3_jax.config import apply_overrides, load_config
from jz3_jax.prompts.plan import PromptPlan
from jz3_jax.prompts.snippets import read_snippets
from jz3_jax.synth import prompts as prompts_module
from jz3_jax.synth.prompts import (PromptRecord, PromptSource, done_digests, id_digest, prompts_from_snippets,
                                   read_prompts)
from jz3_jax.records.shards import ShardWriter
from jz3_jax.synth.synthesize_stage import prompt_seed
from stream_data import write_snippets

COMMON = ["sampling.max_new_tokens=24", "engine.max_batch=2", "engine.max_seq_len=96", "engine.prompt_bucket=32"]


def _prompts(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"Write a problem about {i} apples." + " +1" * (i % 5),
                                "meta": {"snippet": i}}) + "\n")
    return path


def _command(run_dir: Path, prompts: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jz3_jax.launch", "synthesize", "--config", "configs/tiny.py", "--run-dir",
            str(run_dir), f"synthesize.prompts={prompts}", *COMMON, *extra]


def _records(run_dir: Path) -> list[dict]:
    files = resolve_inputs(str(run_dir / "synthesize" / "completions"))
    list(iter_completions(files))  # the filter stage accepts every shard
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    return _prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", 40)


@pytest.fixture(scope="module")
def resumed(prompts_file, tmp_path_factory) -> tuple[list[dict], list[dict], Path]:
    """A run SIGKILLed after its first shard, then rerun: (records before the rerun, after, run dir)."""
    run_dir = tmp_path_factory.mktemp("killed")
    command = _command(run_dir, prompts_file, "synthesize.shard_size=2")
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    shards = run_dir / "synthesize" / "completions"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(shards.glob("part-*.jsonl")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr
    partial = _records(run_dir)
    rerun = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len({r['id'] for r in partial})} already done" in rerun.stderr
    return partial, _records(run_dir), run_dir


def test_sigkill_then_rerun_gives_each_prompt_exactly_once(resumed):
    partial, records, run_dir = resumed
    assert 0 < len(partial) < 40, "the kill should land mid-way"
    assert Counter(r["id"] for r in records) == Counter(f"q{i}" for i in range(40))
    sample = next(r for r in records if r["id"] == "q3")
    assert sample["prompt"].startswith("Write a problem about 3 apples")
    assert sample["finish_reason"] in ("stop", "length") and 0 < sample["completion_tokens"] <= 24
    assert sample["sampling"]["temperature"] == 1.0 and sample["sampling"]["max_new_tokens"] == 24
    assert sample["meta"]["snippet"] == 3
    metrics = (run_dir / "synthesize" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["prompts_done"] == 40 - len(partial)
    report = json.loads((run_dir / "synthesize" / "report.json").read_text())  # the rerun's
    assert report["generated"] == 40 - len(partial) and report["tokens"] > 0
    engine = report["engine"]  # the paged engine's counters (engine.max_batch=2)
    assert 0 < engine["rows_running_mean"] <= engine["rows_running_max"] <= 2 and engine["pages_total"] > 0
    assert engine["prefill_tokens_total"] >= engine["prefill_tokens_computed"] > 0 and engine["pages_in_use"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_split_the_prompts_and_agree_with_one(prompts_file, resumed, tmp_path):
    """Two processes share the prompts; each prompt's completion is the same as in the killed and
    resumed single-process run (seeds are per prompt, not per batch, shard or process)."""
    port = _free_port()
    procs = [subprocess.Popen(_command(tmp_path / "run", prompts_file, f"distributed.coordinator_address=127.0.0.1:{port}",
                                       "distributed.num_processes=2", f"distributed.process_id={pid}"),
                              cwd=REPO_ROOT, env=subprocess_env(devices=2), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for pid in range(2)]
    try:
        errors = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], errors
    files = sorted(p.name for p in (tmp_path / "run" / "synthesize" / "completions").glob("*.jsonl"))
    assert files == ["part-00000-000000.jsonl", "part-00001-000000.jsonl"]
    reports = sorted(p.name for p in (tmp_path / "run" / "synthesize").glob("report*.json"))
    assert reports == ["report-p00001.json", "report.json"]
    records = _records(tmp_path / "run")
    assert Counter(r["id"] for r in records) == Counter(f"q{i}" for i in range(40))
    single = {r["id"]: r for r in resumed[1]}
    for record in records:
        assert record["completion"] == single[record["id"]]["completion"]
        assert record["completion_tokens"] == single[record["id"]]["completion_tokens"]


def _digests(ids) -> np.ndarray:
    """The sorted id digests of `ids`, as `done_digests` gives them."""
    return np.unique(np.frombuffer(b"".join(id_digest(i) for i in ids), dtype="V16"))


def test_process_shares_are_disjoint_complete_and_skip_done(tmp_path):
    """Process i of n gets positions i, i+n, ... of the file's prompts, less the done ids; 1 and "1" differ."""
    path = tmp_path / "prompts.jsonl"
    ids = [0, 1, 2, "3", "4", 5, 6, "7", "x", 9]
    path.write_text("".join(json.dumps({"id": i, "prompt": f"p{i}"}) + "\n" + ("\n" if i == 2 else "") for i in ids))
    source = PromptSource.from_prompts(path)
    done = _digests(["3", 4, "1"])  # "3" is done; 4 and "1" are not ids of this file
    shares = [source.share(done, i, 3) for i in range(3)]
    got = [[r.id for r in share] for share in shares]
    assert got == [[0, 6, 9], [1, "4", "7"], [2, 5, "x"]]
    assert all(s.total == 10 and s.already_done == 1 and len(s) == len(g) for s, g in zip(shares, got))
    assert [r.prompt for r in shares[1]] == ["p1", "p4", "p7"]


def _rendered_whole(snippets: Path, sc, seed: int) -> list[PromptRecord]:
    """The reference: every snippet read into a list, every prompt rendered (as the stage did before)."""
    plan = PromptPlan.from_config("synthesize", sc, seed)
    return [PromptRecord(p.id, p.prompt, p.kind, {"snippet_id": p.snippet_id, "source": p.source, "level": p.level,
                                                  "kind": p.kind})
            for s in read_snippets(snippets) for p in plan.prompts(s.id, s.source, s.text)]


def test_snippet_shares_render_only_their_own_prompts_and_match_the_whole_list(tmp_path, monkeypatch):
    snippets = write_snippets(tmp_path / "snippets.jsonl", 300)  # every 50th line repeats an earlier id
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")), [
        "synthesize.kinds=cot,tool", "synthesize.level_policy=random", "synthesize.source_levels=books=college+aime"])
    everything = _rendered_whole(snippets, cfg.synthesize, cfg.seed)
    assert len(everything) == 2 * 295 and len({r.id for r in everything}) == len(everything)
    assert prompts_from_snippets(snippets, cfg.synthesize, cfg.seed) == everything
    rendered = []
    original = PromptPlan.prompt
    monkeypatch.setattr(PromptPlan, "prompt", staticmethod(lambda *a: rendered.append(a[0]) or original(*a)))
    source = PromptSource.from_snippets(snippets, cfg.synthesize, cfg.seed)
    done_ids = {r.id for r in everything[::7]}
    shares = [source.share(_digests(done_ids), i, 2) for i in range(2)]
    assert rendered == []  # finding the shares renders nothing
    got = [list(share) for share in shares]
    assert len(rendered) == sum(len(g) for g in got)  # and iterating renders each prompt once
    assert got == [[r for r in everything[i::2] if r.id not in done_ids] for i in range(2)]
    assert all(s.total == len(everything) and s.already_done == len(done_ids) for s in shares)


def test_repeated_ids_are_exact_even_when_digests_collide(tmp_path, monkeypatch):
    """Lines whose id digests are equal are told apart by their ids: with a digest that collides for
    every id of the same length, snippets are still deduplicated exactly and prompts files still
    accept distinct ids and name a real repeat."""
    snippets = write_snippets(tmp_path / "snippets.jsonl", 200)
    cfg = load_config(str(REPO_ROOT / "configs" / "tiny.py"))
    everything = _rendered_whole(snippets, cfg.synthesize, cfg.seed)
    monkeypatch.setattr(prompts_module, "id_digest", lambda value: len(repr(value)).to_bytes(16, "little"))
    assert prompts_from_snippets(snippets, cfg.synthesize, cfg.seed) == everything
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "p"}) + "\n" for i in (1, 2, 3, 2)))
    with pytest.raises(SynthesizeError, match=r"prompts.jsonl:4: duplicate id 'q2' \(first on line 2\)"):
        read_prompts(path)
    path.write_text("".join(json.dumps({"id": i, "prompt": "p"}) + "\n" for i in ("a", "b", "c")))
    assert [r.id for r in read_prompts(path)] == ["a", "b", "c"]


def test_done_ids_come_from_finished_shards(tmp_path):
    out = tmp_path / "completions"
    writer = ShardWriter(epath.Path(out), 0, 2)
    for i in ("a", "b", "c"):
        writer.add({"id": i, "completion": "x"})
    writer.flush()
    (out / ".part-00000-000009.jsonl.tmp-1").write_text('{"id": "d"}\n')  # an unfinished shard
    assert len(done_digests(out)) == 3
    assert set(done_digests(out).tolist()) == set(_digests(["a", "b", "c"]).tolist())


def test_prompt_seed_depends_on_seed_and_id():
    assert prompt_seed(0, "a") == prompt_seed(0, "a")
    assert len({prompt_seed(0, "a"), prompt_seed(1, "a"), prompt_seed(0, "b"), prompt_seed(0, 1),
                prompt_seed(0, "1")}) == 5
    assert 0 <= prompt_seed(123, "x") < 2**63


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}', ":2: duplicate id 'a' (first on line 1)"),
    ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": ', ":2: not valid JSON"),
    ('{"id": "a"}', ":1: field 'prompt' must be a non-empty string"),
    ('{"id": true, "prompt": "x"}', ":1: field 'id' must be"),
    ('{"id": 1, "prompt": "x", "kind": "essay"}', "field 'kind' must be one of"),
    ("\n\n", "has no records"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(line)
    with pytest.raises(SynthesizeError, match="prompts.jsonl") as info:
        read_prompts(path)
    assert message in str(info.value)


def test_missing_prompts_file_exits_2(tmp_path, run_launch):
    result = run_launch("synthesize", "--config", "configs/tiny.py", "--run-dir", tmp_path,
                        f"synthesize.prompts={tmp_path / 'nope.jsonl'}")
    assert result.returncode == 2
    assert "nope.jsonl" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "synthesize" / "completions").exists()
