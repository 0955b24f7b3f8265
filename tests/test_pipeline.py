"""The `pipeline` stage end to end on configs/tiny.py (random tiny model, byte tokenizer), with a
loopback stub teacher that writes a well-formed answer for every prompt.

Default run: the pipeline without the boost round, SIGKILLed once mid-sft and rerun; an identical
rerun that skips every stage; a changed key that reruns that stage and the ones after it only;
`pipeline.stages=report`; a subset; a failing stage named with its log; the fingerprints' rules.
Slow: the full pipeline SIGKILLed in the middle of each of its twelve steps in turn, then rerun to
completion; two processes running the pipeline together.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import REPO_ROOT, subprocess_env
from jz3_jax.pipeline.assets import data_path

KEY_ENV = "JZ3_TEST_PIPELINE_KEY"
MODEL = "stub-teacher"


class StubTeacher(ThreadingHTTPServer):
    """An OpenAI-style chat endpoint answering every prompt with a distinct, valid problem and
    solution (numbers from the prompt's hash); `delay` seconds per answer; counts requests."""

    daemon_threads = True

    def __init__(self, port: int = 0, delay: float = 0.0):
        self.delay, self.requests, self.lock = delay, 0, threading.Lock()
        super().__init__(("127.0.0.1", port), _StubHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def stub_answer(prompt: str) -> str:
    """A well-formed answer of the prompt's kind (cot, or tool: a Python block and a boxed answer)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    a, b = 2 + digest[0] % 90, 2 + digest[1] % 90
    problem = f"A crate holds {a} apples and {b} pears. How many pieces of fruit does it hold?"
    if "## Code Solution" in prompt:
        return (f"{problem}\n\n## Code Solution\n```python\nprint({a} + {b})\n```\n"
                f"The program prints {a + b}, so the answer is $\\boxed{{{a + b}}}$.")
    return f"{problem}\n\n## Solution\nThere are {a} + {b} = {a + b} pieces, so the answer is $\\boxed{{{a + b}}}$."


class _StubHandler(BaseHTTPRequestHandler):
    server: StubTeacher

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests += 1
        if self.server.delay:
            time.sleep(self.server.delay)
        content = stub_answer(request["messages"][0]["content"])
        body = {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340}}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# --- the pipeline on configs/tiny.py -----------------------------------------------------------------


TINY = ("--config", "configs/tiny.py")
STEP_NAMES = ["corpus", "distill_initial", "sft_initial", "select", "distill_boost", "sft_boost", "synthesize",
              "filter", "pretrain", "eval_base", "eval", "report"]
FAST = [f"corpus.sources={data_path('corpus.jsonl')}", "corpus.max_snippets=8", "distill.num_snippets=4",
        "select.top_k=2", "select.warmup_epochs=1", "select.gradients=logra",
        "data.max_length=256", "train.global_batch_size=2", "train.steps=2", "train.log_every=1",
        "engine.prompt_bucket=512", "engine.max_batch=8", "sampling.max_new_tokens=16", "eval.limit=2",
        "eval.max_new_tokens=16", f"pipeline.pretrain_mix={data_path('tiny_train.jsonl')}", "train.checkpoint_every=1"]
NO_BOOST = ["pipeline.boost=false"]


def teacher_overrides(teacher: StubTeacher) -> list[str]:
    return [f"teacher.base_url={teacher.url}", f"teacher.model={MODEL}", f"teacher.api_key_env={KEY_ENV}"]


def pipeline_command(run_dir: Path, teacher: StubTeacher, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jz3_jax.launch", "pipeline", *TINY, "--run-dir", str(run_dir),
            *teacher_overrides(teacher), *FAST, *extra]


def run_pipeline(run_dir: Path, teacher: StubTeacher, *extra: str, timeout: float = 900):
    return subprocess.run(pipeline_command(run_dir, teacher, *extra), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(extra={KEY_ENV: "k"}))


def outcome(stderr: str) -> dict[str, str]:
    """{step: "ran" | "skipped"} from the pipeline's last log line."""
    line = [l for l in stderr.splitlines() if "pipeline: done (" in l][-1]
    return dict(item.split(" ") for item in line.split("pipeline: done (")[1].rstrip(")").split(", "))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kill_when(command: list[str], ready, timeout: float = 600) -> None:
    """Start `command` in its own process group and SIGKILL the group once `ready()` is true."""
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=subprocess_env(extra={KEY_ENV: "k"}), start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the pipeline exited ({proc.returncode}) before the kill point"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def check_complete(run_dir: Path, boost: bool = True, eval_n: tuple[int, int] = (2, 2)) -> None:
    """Every step finished once: markers, artifacts, and no record twice."""
    names = [n for n in STEP_NAMES if boost or n not in ("select", "distill_boost", "sft_boost")]
    for name in names:
        assert (run_dir / name / "pipeline.done.json").exists(), name
    assert len(read_jsonl(run_dir / "corpus" / "snippets.jsonl")) == 8
    initial = read_jsonl(run_dir / "distill_initial" / "kd.jsonl")
    assert len(initial) == 4 and len({r["id"] for r in initial}) == 4
    if boost:
        boost_kd = read_jsonl(run_dir / "distill_boost" / "kd.jsonl")
        selected = read_jsonl(run_dir / "select" / "selected.jsonl")
        assert len(selected) == 2
        hashes = [r["request_hash"] for r in boost_kd]
        assert len(hashes) == len(set(hashes)) and {r["request_hash"] for r in initial} <= set(hashes)  # both rounds
        assert {s["id"] for s in selected} <= {r["snippet_id"] for r in boost_kd}
    completions = [r for f in sorted((run_dir / "synthesize" / "completions").glob("*.jsonl")) for r in read_jsonl(f)]
    assert len(completions) == len({r["id"] for r in completions}) == 8
    for name in ("sft_initial", "sft_boost", "pretrain") if boost else ("sft_initial", "pretrain"):
        steps = [r["step"] for r in read_jsonl(run_dir / name / "metrics.jsonl")]
        assert steps == [1, 2], (name, steps)
        assert (run_dir / name / "hf" / "config.json").exists()
    for name, n in zip(("eval_base", "eval"), eval_n):
        samples = read_jsonl(run_dir / name / "samples.jsonl")
        assert len(samples) == n == len({s["id"] for s in samples})
    report = (run_dir / "report.md").read_text()
    for section in ("Training loss", "Teacher calls and spend", "Synthesized problems", "Filter", "Evaluation",
                    *(("Influence selection",) if boost else ())):
        assert f"## {section}" in report
    for png in ("loss", "teacher", "lengths", *(("influence",) if boost else ())):
        assert (run_dir / "report" / f"{png}.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def teacher():
    server = StubTeacher()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tiny_run(teacher, tmp_path_factory):
    """The pipeline without the boost round (the fast end-to-end run), SIGKILLed once in the middle
    of sft_initial (after its first checkpoint) and rerun to completion."""
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    kill_when(pipeline_command(run_dir, teacher, *NO_BOOST),
              lambda: (run_dir / "sft_initial" / "checkpoints" / "1").exists())
    assert not (run_dir / "sft_initial" / "pipeline.done.json").exists()
    proc = run_pipeline(run_dir, teacher, *NO_BOOST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_the_pipeline_leaves_every_stage_s_artifacts_and_the_report(tiny_run, teacher):
    run_dir, proc = tiny_run
    ran = outcome(proc.stderr)
    assert ran["corpus"] == ran["distill_initial"] == "skipped" and ran["sft_initial"] == "ran"  # the killed one
    assert "resumed from checkpoint at step 1" in (run_dir / "sft_initial" / "logs" / "process_0.log").read_text()
    check_complete(run_dir, boost=False)
    assert teacher.requests == 4  # none asked twice across the kill
    distill_cfg = json.loads((run_dir / "distill_initial" / "config.json").read_text())
    assert distill_cfg["distill"]["snippets"] == str(run_dir / "corpus" / "snippets.jsonl")
    assert distill_cfg["distill"]["cache_dir"] == str(run_dir / "teacher_cache")
    synth_cfg = json.loads((run_dir / "synthesize" / "config.json").read_text())
    assert synth_cfg["model"]["checkpoint"] == str(run_dir / "sft_initial" / "hf")
    assert json.loads((run_dir / "eval" / "config.json").read_text())["model"]["checkpoint"] == str(
        run_dir / "pretrain" / "hf")
    assert "| jz3_mini |" in (run_dir / "report.md").read_text()


def test_an_identical_rerun_skips_every_stage_in_under_a_minute(tiny_run, teacher):
    run_dir, _ = tiny_run
    requests = teacher.requests
    started = time.monotonic()
    proc = run_pipeline(run_dir, teacher, *NO_BOOST)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = outcome(proc.stderr)
    assert {k for k, v in ran.items() if v == "ran"} == {"report"}, ran  # the report is always rebuilt
    assert seconds < 60 and teacher.requests == requests


def test_a_changed_key_reruns_that_stage_and_the_ones_after_it_only(tiny_run, teacher):
    run_dir, _ = tiny_run
    before = (run_dir / "eval_base" / "pipeline.done.json").read_text()
    proc = run_pipeline(run_dir, teacher, *NO_BOOST, "pipeline.pretrain=train.steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = outcome(proc.stderr)
    assert {k for k, v in ran.items() if v == "ran"} == {"pretrain", "eval", "report"}, ran
    assert [r["step"] for r in read_jsonl(run_dir / "pretrain" / "metrics.jsonl")] == [1, 2, 3]  # from scratch
    assert (run_dir / "eval_base" / "pipeline.done.json").read_text() == before


def test_stages_report_rebuilds_the_report_from_the_artifacts(tiny_run, teacher):
    run_dir, _ = tiny_run
    (run_dir / "report.md").unlink()
    proc = run_pipeline(run_dir, teacher, *NO_BOOST, "pipeline.stages=report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outcome(proc.stderr) == {"report": "ran"}
    assert "## Evaluation" in (run_dir / "report.md").read_text()


def test_a_failing_stage_stops_the_pipeline_naming_it_and_its_log(tmp_path, teacher):
    proc = run_pipeline(tmp_path / "run", teacher, f"corpus.sources={tmp_path / 'missing.jsonl'}", timeout=120)
    assert proc.returncode == 2, proc.stderr
    log = tmp_path / "run" / "corpus" / "logs" / "process_0.log"
    assert "pipeline stage corpus failed" in proc.stderr and f"(log: {log})" in proc.stderr
    assert log.exists() and "Traceback" in log.read_text()
    assert not (tmp_path / "run" / "corpus" / "pipeline.done.json").exists()


def test_a_subset_needs_its_inputs_and_stage_names_are_checked(tmp_path, teacher):
    proc = run_pipeline(tmp_path / "run", teacher, "pipeline.stages=pretrain", timeout=120)
    assert proc.returncode == 2 and "pretrain reads the outputs of filter" in proc.stderr, proc.stderr
    proc = run_pipeline(tmp_path / "run", teacher, "pipeline.stages=sft,pretrian", timeout=120)
    assert proc.returncode == 2 and "unknown stage 'pretrian'" in proc.stderr, proc.stderr


def test_fingerprints_change_for_the_steps_that_read_a_key_and_those_downstream_only():
    from jz3_jax.config import apply_overrides, load_config
    from jz3_jax.pipeline.stage import plan

    def digests(*overrides: str) -> dict[str, str]:
        cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")), ["run_dir=/tmp/fp", *overrides])
        return {step.name: digest for step, _, digest in plan(cfg)[0]}

    base = digests()

    def changed(*overrides: str) -> set[str]:
        return {k for k, v in digests(*overrides).items() if v != base[k]}

    assert changed("eval.limit=7") == {"eval_base", "eval"}
    assert changed("pipeline.pretrain=train.steps=3") == {"pretrain", "eval"}
    assert changed("filter.ngram=9") == {"filter", "pretrain", "eval"}
    assert changed("select.top_k=3") == {"select", "distill_boost", "sft_boost", "synthesize", "filter", "pretrain",
                                         "eval"}
    assert changed("corpus.max_chars=500") == set(STEP_NAMES) - {"eval_base", "report"}
    assert changed("pipeline.stages=report", "eval.shard_size=16") == set()  # not read; shard_size = its default
    assert digests("run_dir=/elsewhere") == base  # a moved run dir keeps its fingerprints


def _with_default(monkeypatch, section_type: type, key: str, value) -> None:
    """Make `section_type()` default `key` to `value`, as if the code's default had been edited."""
    import inspect

    names = [p.name for p in inspect.signature(section_type.__init__).parameters.values()
             if p.default is not inspect.Parameter.empty]
    defaults = list(section_type.__init__.__defaults__)
    assert len(defaults) == len(names) and key in names
    defaults[names.index(key)] = value
    monkeypatch.setattr(section_type.__init__, "__defaults__", tuple(defaults))
    assert getattr(section_type(), key) == value


@pytest.mark.parametrize("owner, key, value, rerun", [
    ("jz3_jax.synth.config:FilterConfig", "ngram", 9, {"filter", "pretrain", "eval"}),
    ("jz3_jax.influence.config:SelectConfig", "proj_seed", 5,
     {"select", "distill_boost", "sft_boost", "synthesize", "filter", "pretrain", "eval"}),
    ("jz3_jax.decoding.config:EngineConfig", "max_top_k", 7, {"synthesize", "filter", "pretrain", "eval_base", "eval"}),
    ("jz3_jax.eval.config:GradeConfig", "workers", 3, set()),  # read by the grade stage only, not the pipeline
])
def test_a_changed_default_in_the_code_reruns_the_steps_that_read_it_and_nothing_else(
        tmp_path, monkeypatch, owner, key, value, rerun):
    """Every step done with the old defaults; the code's default of one key changes; the steps whose
    stage reads that key and everything downstream of them are stale, every other step stays done."""
    import importlib

    from jz3_jax.config import load_config
    from jz3_jax.pipeline import markers
    from jz3_jax.pipeline.stage import plan

    run_dir = tmp_path / "run"

    def planned() -> dict[str, str]:
        cfg = load_config(str(REPO_ROOT / "configs" / "tiny.py"))
        cfg.run_dir = str(run_dir)
        return {step.name: digest for step, _, digest in plan(cfg)[0]}

    for name, digest in planned().items():
        (run_dir / name).mkdir(parents=True)
        markers.write(run_dir / name, markers.DONE, digest)
    module, name = owner.split(":")
    _with_default(monkeypatch, getattr(importlib.import_module(module), name), key, value)
    states = {name: markers.state(run_dir / name, digest) for name, digest in planned().items()}
    assert {name for name, state in states.items() if state == "stale"} == rerun
    assert {name for name, state in states.items() if state == "done"} == set(STEP_NAMES) - rerun


# --- SIGKILL in the middle of every stage (slow: one pipeline run, killed once per stage) -------------

def _count(pattern: str):
    return lambda run_dir: len(list(run_dir.glob(pattern)))


def _started(name: str):
    return lambda run_dir: (run_dir / name / "pipeline.started.json").exists()


# When a stage is part-way: some of its work is on disk and its done marker is not.
KILL_POINTS = {
    "corpus": _started("corpus"),  # a large source makes it take seconds
    "distill_initial": lambda d: _count("teacher_cache/*")(d) >= 1,  # 1 s per answer, one at a time
    "sft_initial": lambda d: (d / "sft_initial" / "checkpoints" / "1").exists(),
    "select": lambda d: (d / "select" / "warmup" / "done.json").exists(),
    "distill_boost": lambda d: _started("distill_boost")(d) and _count("teacher_cache/*")(d) >= 5,
    "sft_boost": lambda d: (d / "sft_boost" / "checkpoints" / "1").exists(),
    "synthesize": lambda d: _count("synthesize/completions/*.jsonl")(d) >= 1,  # one completion per shard
    "filter": _started("filter"),  # a large evaluation set makes its index take seconds
    "pretrain": lambda d: (d / "pretrain" / "checkpoints" / "1").exists(),
    "eval_base": lambda d: _count("eval_base/samples/*.jsonl")(d) >= 1,
    "eval": lambda d: _count("eval/samples/*.jsonl")(d) >= 1,
    "report": _started("report"),
}


@pytest.fixture(scope="module")
def kill_run(tmp_path_factory):
    """One run dir, a slow teacher and large corpus / evaluation inputs, shared by the kill tests in order."""
    base = tmp_path_factory.mktemp("kills")
    big = base / "big.jsonl"
    with big.open("w") as f:
        for i in range(60_000):
            f.write(json.dumps({"text": f"Exercise {i}: a number {i} is multiplied by {i % 7 + 2} and {i % 5} is added."
                                        " What is the result when the same steps are repeated twice?"}) + "\n")
    evals = base / "eval_sets"
    (evals / "big").mkdir(parents=True)
    (evals / "jz3_mini").mkdir()
    (evals / "jz3_mini" / "test.jsonl").write_text(Path(data_path("eval_sets"), "jz3_mini", "test.jsonl").read_text())
    with (evals / "big" / "test.jsonl").open("w") as f:
        for i in range(60_000):
            question = (f"Problem {i}: how many ways can {i % 9 + 2} friends sit in a row of {i % 11 + 3} chairs "
                        "if two of them insist on sitting next to each other?")
            f.write(json.dumps({"question": question}) + "\n")
    server = StubTeacher(delay=1.0)
    # the boost round asks for tool answers: never in the first round's cache, so it always calls the teacher
    extra = [f"corpus.sources={big}", f"filter.eval_dir={evals}", "distill.concurrency=1", "synthesize.shard_size=1",
             "eval.shard_size=1", "pipeline.distill_boost=distill.kinds=tool",
             # one problem at a time, so a shard is on disk well before the last one
             "pipeline.eval_base=engine.max_batch=1", "pipeline.eval=engine.max_batch=1,eval.limit=4"]
    yield base / "run", server, extra
    server.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", STEP_NAMES)
def test_sigkill_in_the_middle_of_each_stage(kill_run, name):
    run_dir, server, extra = kill_run
    kill_when(pipeline_command(run_dir, server, *extra), lambda: KILL_POINTS[name](run_dir), timeout=900)
    assert not (run_dir / name / "pipeline.done.json").exists(), f"{name} finished before the kill"
    for earlier in STEP_NAMES[:STEP_NAMES.index(name)]:
        assert (run_dir / earlier / "pipeline.done.json").exists(), earlier


@pytest.mark.slow
def test_after_a_kill_in_every_stage_the_rerun_completes_with_nothing_twice_or_missing(kill_run):
    run_dir, server, extra = kill_run
    proc = run_pipeline(run_dir, server, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_complete(run_dir, eval_n=(2, 4))
    asked = {r["request_hash"] for r in read_jsonl(run_dir / "distill_boost" / "kd.jsonl")}
    assert server.requests <= len(asked) + 2  # at most the answers in flight at the two kills were lost


@pytest.mark.slow
def test_two_processes_run_the_pipeline_together_and_a_rerun_skips(tmp_path, teacher, monkeypatch):
    from test_pods import Pod

    monkeypatch.setenv(KEY_ENV, "k")
    run_dir = tmp_path / "run"
    stages = "pipeline.stages=corpus,distill_initial,sft_initial,synthesize,filter"
    args = [*teacher_overrides(teacher), *FAST, *NO_BOOST, stages, "train.global_batch_size=8",
            "distill.num_snippets=8"]  # 8 devices, 2 processes: every share gets records
    codes, stderr, _ = Pod("pipeline", [run_dir, run_dir], *args).start().wait(timeout=900)
    assert codes == [0, 0], "\n".join(s[-2000:] for s in stderr)
    for name in ("corpus", "distill_initial", "sft_initial", "synthesize", "filter"):
        assert (run_dir / name / "pipeline.done.json").exists(), name
    completions = [r for f in sorted((run_dir / "synthesize" / "completions").glob("*.jsonl")) for r in read_jsonl(f)]
    assert len(completions) == len({r["id"] for r in completions}) == 8  # each process its share, once
    assert len(read_jsonl(run_dir / "distill_initial" / "kd.jsonl")) == 8
    codes, stderr, seconds = Pod("pipeline", [run_dir, run_dir], *args).start().wait(timeout=300)
    assert codes == [0, 0], "\n".join(s[-2000:] for s in stderr)
    assert set(outcome(stderr[0]).values()) == {"skipped"}


def test_stage_specs_artifact_table_and_pipeline_links_agree():
    """Every artifact a spec consumes or produces is in the table, the table's producer declares it,
    and every pipeline link reads an artifact that the linked step's stage produces."""
    from jz3_jax.pipeline.steps import ALL
    from jz3_jax.runtime.artifacts import ARTIFACTS
    from jz3_jax.stages import STAGES

    produced = {}
    for stage in STAGES.values():
        spec = stage.spec_type()
        if spec is None:
            continue
        assert set(spec.CONSUMES) <= set(ARTIFACTS) and set(spec.PRODUCES) <= set(ARTIFACTS), stage.name
        produced[stage.name] = set(spec.PRODUCES)
    for name, artifact in ARTIFACTS.items():
        assert name in produced.get(artifact.producer, set()) or name == "pretrain.data", name
    for step in ALL.values():
        for link in step.links:
            assert link.artifact in produced[ALL[link.step].stage], (step.name, link)
