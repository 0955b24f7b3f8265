"""The `distill` stage against a loopback teacher that injects faults and counts requests server-side.

Each snippet may carry a script like `[[429ra,500]]`: the first attempts at its request get those
faults in order, later attempts a good answer. Faults: 429 (no Retry-After), 429ra (Retry-After: 1),
500, hang (no answer until past teacher.timeout_s), garbage (a 200 that is not JSON), nochoices
(a 200 JSON body without choices), reject (a well-formed answer that fails validation, always).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from etils import epath

from helpers import REPO_ROOT, run_launch, subprocess_env
from jz3_jax.config import apply_overrides, build_spec, load_config
from jz3_jax.distill.spec import DistillSpec
from jz3_jax.distill import stage
from jz3_jax.distill.answers import parse_body
from jz3_jax.distill.budget import Budget
from jz3_jax.distill.client import backoff_delay, retry_after_seconds
from jz3_jax.errors import TeacherError
from jz3_jax.distill.validate import validate
from jz3_jax.stages.registry import StageContext

KEY_ENV = "JZ3_TEST_TEACHER_KEY"
KEY = "sk-test-secret"
MODEL = "fake-teacher"
GOOD = "A shop sells pens at 3 dollars each. How much do 7 pens cost?\n\n## Solution\n7 * 3 = 21, so $\\boxed{21}$."
SCRIPT = re.compile(r"\[\[([a-z0-9,]+)\]\]")
LOGGER = logging.getLogger("jz3_jax.test_distill")


class FakeTeacher(ThreadingHTTPServer):
    """An OpenAI-style chat endpoint with scripted faults; counts attempts and good answers per prompt."""

    daemon_threads = True

    def __init__(self, delay: float = 0.0, hang_s: float = 3.0, handler=None):
        self.delay = delay
        self.hang_s = hang_s
        self.lock = threading.Lock()
        self.attempts: collections.Counter = collections.Counter()  # prompt -> requests received
        self.answered: collections.Counter = collections.Counter()  # prompt -> well-formed 200s sent
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0
        super().__init__(("127.0.0.1", 0), handler or _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def total(self) -> int:
        return sum(self.attempts.values())

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeTeacher

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        body = {"error": {"message": message, "type": "test_error", "param": None, "code": code}}
        self._send(status, json.dumps(body).encode(), headers)

    def do_POST(self) -> None:
        server = self.server
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = request["messages"][0]["content"]
        with server.lock:
            server.attempts[prompt] += 1
            attempt = server.attempts[prompt]
            server.times[prompt].append(time.monotonic())
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            self._answer(request, prompt, attempt)
        finally:
            with server.lock:
                server.in_flight -= 1

    def _answer(self, request: dict, prompt: str, attempt: int) -> None:
        server = self.server
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._error(401, "Incorrect API key provided", "invalid_api_key")
        if request["model"] != MODEL:
            return self._error(404, f"The model {request['model']} does not exist", "model_not_found")
        if server.delay:
            time.sleep(server.delay)
        match = SCRIPT.search(prompt)
        script = match.group(1).split(",") if match else []
        fault = script[attempt - 1] if attempt <= len(script) else ("reject" if "reject" in script else "ok")
        if fault == "429":
            return self._error(429, "Rate limit reached", "rate_limit_exceeded")
        if fault == "429ra":
            return self._error(429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": "1"})
        if fault == "500":
            return self._error(500, "The server had an error")
        if fault == "hang":
            time.sleep(server.hang_s)
            self.close_connection = True
            return None
        if fault == "garbage":
            return self._send(200, b"<html>upstream proxy error</html>")
        if fault == "nochoices":
            return self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
        content = "I would rather not write a problem about this." if fault == "reject" else GOOD
        body = {"id": f"chatcmpl-{attempt}", "object": "chat.completion", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
        with server.lock:
            server.answered[prompt] += 1
        self._send(200, json.dumps(body).encode())


def write_snippets(path: Path, scripts: list[str]) -> Path:
    with path.open("w") as f:
        for i, script in enumerate(scripts):
            text = f"Snippet {i}: pens cost 3 dollars each. {script}".strip()
            f.write(json.dumps({"id": f"s{i}", "source": "test", "text": text}) + "\n")
    return path


def overrides(run_dir: Path, snippets: Path, url: str, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", f"distill.snippets={snippets}", f"teacher.base_url={url}", f"teacher.model={MODEL}",
            f"teacher.api_key_env={KEY_ENV}", "teacher.timeout_s=5", "teacher.max_retries=3", "teacher.backoff_s=0.02",
            "teacher.max_backoff_s=0.1", "teacher.max_tokens=64", "distill.level_policy=fixed",
            "distill.levels=high_school", "distill.concurrency=3", "teacher.price_input_per_1m=2.5",
            "teacher.price_output_per_1m=10", *extra]


def run_distill(run_dir: Path, snippets: Path, url: str, *extra: str) -> dict:
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")),
                          overrides(run_dir, snippets, url, *extra))
    ctx = StageContext("distill", epath.Path(run_dir) / "distill", LOGGER)
    return stage.run(build_spec(DistillSpec, cfg), ctx)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def teacher():
    server = FakeTeacher()
    yield server
    server.close()


FAULTS = ["[[429ra]]", "[[429,429]]", "[[500,500]]", "[[hang]]", "[[garbage]]", "[[nochoices,500]]", "[[reject]]",
          "", "", ""]


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """One run against the faulty teacher, then an identical rerun: (server, first report, second report, dir)."""
    server = FakeTeacher()
    run_dir = tmp_path_factory.mktemp("faulty")
    snippets = write_snippets(run_dir / "snippets.jsonl", FAULTS)
    os.environ[KEY_ENV] = KEY
    first = run_distill(run_dir, snippets, server.url, "teacher.timeout_s=1.5")  # the hang lasts 3 s
    attempts_after_first = server.total
    second = run_distill(run_dir, snippets, server.url, "teacher.timeout_s=1.5")
    yield server, first, second, run_dir, attempts_after_first
    server.close()


def test_every_failure_kind_is_counted_and_the_stage_completes(faulty_run):
    server, first, _, run_dir, _ = faulty_run
    assert first["failures"] == {"rate_limited": 3, "server_error": 3, "timeout": 1, "connection": 0, "malformed": 2}
    assert first["retries"] == 9 and first["calls"] == 10 + 9 == server.total
    assert first["records"] == 9 and first["rejected"] == {"no_solution_header": 1}
    assert first["unfinished"] == 0 and first["stopped_by"] is None and first["cache_hits"] == 0
    assert first["prompt_tokens"] == 1000 and first["completion_tokens"] == 200
    assert first["cost_estimate"] == pytest.approx((1000 * 2.5 + 200 * 10) / 1e6)
    records = read_jsonl(run_dir / "distill" / "kd.jsonl")
    assert len(records) == 9 and len({r["request_hash"] for r in records}) == 9
    for record in records:
        assert record["output"].startswith("A shop sells pens") and "\n\n## Solution\n" in record["output"]
        assert record["input"].endswith("## Problem\n") and record["level"] == "high_school"
        assert record["teacher_model"] == MODEL and record["usage"] == {"prompt_tokens": 100, "completion_tokens": 20}
        assert record["sampling"]["max_tokens"] == 64 and record["sampling"]["temperature"] == 0.6
    rejected = read_jsonl(run_dir / "distill" / "rejected.jsonl")
    assert [r["reason"] for r in rejected] == ["no_solution_header"] and rejected[0]["snippet_id"] == "s6"
    # the bad 200 bodies were kept for inspection, outside the answers
    assert len(list((run_dir / "distill" / "cache" / "malformed").glob("*.json"))) == 2


def test_retry_after_is_honoured(faulty_run):
    server = faulty_run[0]
    (prompt,) = [p for p in server.times if "[[429ra]]" in p]
    first, second = server.times[prompt]
    assert second - first >= 1.0  # Retry-After: 1, while the back-off alone is at most 0.1 s


def test_rerun_pays_nothing_and_nothing_is_answered_twice(faulty_run):
    server, first, second, run_dir, attempts_after_first = faulty_run
    assert server.total == attempts_after_first  # the identical rerun made no request at all
    assert second["calls"] == 0 and second["cache_hits"] == 10 and second["records"] == 9
    assert second["rejected"] == {"no_solution_header": 1}
    assert max(server.answered.values()) == 1 and len(server.answered) == 10
    (rejected_prompt,) = [p for p in server.attempts if "[[reject]]" in p]
    assert server.attempts[rejected_prompt] == 1  # a rejected answer is never asked again


def test_budget_on_calls_is_never_exceeded_and_a_higher_budget_finishes(teacher, tmp_path):
    teacher.delay = 0.15
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 12)
    report = run_distill(tmp_path, snippets, teacher.url, "distill.max_calls=5", "distill.concurrency=4")
    assert teacher.total == 5 and report["calls"] == 5 and teacher.max_in_flight > 1
    assert report["stopped_by"] == "max_calls" and report["records"] == 5 and report["unfinished"] == 7
    partial = read_jsonl(tmp_path / "distill" / "kd.jsonl")
    assert len(partial) == 5 and all(r["output"] and r["input"] for r in partial)
    assert json.loads((tmp_path / "distill" / "report.json").read_text())["stopped_by"] == "max_calls"
    report = run_distill(tmp_path, snippets, teacher.url, "distill.max_calls=100", "distill.concurrency=4")
    assert report["stopped_by"] is None and report["records"] == 12 and report["cache_hits"] == 5
    assert teacher.total == 12 and set(teacher.answered.values()) == {1}


def test_budget_on_tokens_counts_in_flight_requests(teacher, tmp_path):
    teacher.delay = 0.15
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 8)
    from jz3_jax.distill.requests import build_requests
    from jz3_jax.prompts.plan import PromptPlan
    from jz3_jax.prompts.snippets import read_snippets

    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")),
                          overrides(tmp_path, snippets, teacher.url))
    plan = PromptPlan.build("distill", ["high_school"], ["cot"], "fixed", 0)
    bound = max(r.token_bound for r in build_requests(read_snippets(snippets), plan, cfg.teacher))
    # room for 3 worst-case attempts at once; each answer costs 120 tokens, far less than the bound
    report = run_distill(tmp_path, snippets, teacher.url, f"distill.max_tokens={3 * bound}", "distill.concurrency=8")
    assert teacher.max_in_flight <= 3
    assert report["prompt_tokens"] + report["completion_tokens"] <= 3 * bound
    assert report["records"] == 8 and report["stopped_by"] is None  # settled reservations free room
    report = run_distill(tmp_path / "small", snippets, teacher.url, f"distill.max_tokens={bound - 1}")
    assert report["stopped_by"] == "max_tokens" and report["calls"] == 0


def test_bad_key_unknown_model_and_unreachable_name_the_cause_and_keep_the_cache(teacher, tmp_path, monkeypatch):
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 3)
    assert run_distill(tmp_path, snippets, teacher.url, "distill.num_snippets=2")["records"] == 2
    cache_files = sorted((tmp_path / "distill" / "cache").glob("??/*.json"))
    kd_before = (tmp_path / "distill" / "kd.jsonl").read_text()
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(TeacherError, match="refused the API key.*401"):
        run_distill(tmp_path, snippets, teacher.url)
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(TeacherError, match="does not know model 'gpt-9'.*404"):
        run_distill(tmp_path, snippets, teacher.url, "teacher.model=gpt-9")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with pytest.raises(TeacherError, match="cannot reach the teacher"):
        run_distill(tmp_path, snippets, dead, "teacher.max_retries=1")
    assert sorted((tmp_path / "distill" / "cache").glob("??/*.json")) == cache_files
    assert (tmp_path / "distill" / "kd.jsonl").read_text() == kd_before
    report = json.loads((tmp_path / "distill" / "report.json").read_text())
    assert report["records"] == 2 and report["requests"] == 2  # the failed runs left the outputs alone
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(Exception, match=KEY_ENV):
        run_distill(tmp_path, snippets, teacher.url)


def test_launcher_exits_non_zero_with_the_cause(teacher, tmp_path):
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""])
    args = ["distill", "--config", "configs/tiny.py", *overrides(tmp_path, snippets, teacher.url)]
    result = run_launch(*args, env={KEY_ENV: "sk-wrong"})
    assert result.returncode == 2 and "refused the API key" in result.stderr and "401" in result.stderr
    assert teacher.total == 1


def test_sigkill_mid_run_then_rerun_loses_nothing_and_pays_nothing_twice(teacher, tmp_path):
    teacher.delay = 0.3
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 16)
    command = [sys.executable, "-m", "jz3_jax.launch", "distill", "--config", "configs/tiny.py",
               *overrides(tmp_path, snippets, teacher.url, "distill.concurrency=2")]
    env = subprocess_env(extra={KEY_ENV: KEY})
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    cache = tmp_path / "distill" / "cache"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(cache.glob("??/*.json"))) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    while teacher.in_flight:  # the server finishes answering the requests the killed run had in flight
        time.sleep(0.02)
    paid_before = sum(teacher.answered.values())
    attempts_before = dict(teacher.attempts)
    cached_before = len(list(cache.glob("??/*.json")))
    assert 4 <= cached_before < 16 and paid_before - cached_before <= 2  # at most the in-flight ones are lost
    teacher.delay = 0.0
    rerun = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((tmp_path / "distill" / "report.json").read_text())
    assert report["records"] == 16 and report["cache_hits"] == cached_before
    assert report["calls"] == 16 - cached_before
    # every answer stored before the kill was served from the cache, never asked again
    asked_again = [p for p, n in teacher.attempts.items() if n > attempts_before.get(p, 0)]
    assert len(asked_again) == 16 - cached_before
    assert sum(teacher.answered.values()) == paid_before + 16 - cached_before
    assert len(read_jsonl(tmp_path / "distill" / "kd.jsonl")) == 16


# --- units ------------------------------------------------------------------------------------------


def test_backoff_is_jittered_exponential_capped_and_respects_retry_after():
    rng = random.Random(0)
    delays = [backoff_delay(3, 0.5, 60.0, None, rng) for _ in range(500)]
    assert 0.0 <= min(delays) and max(delays) <= 4.0 and max(delays) > 3.0 and len(set(delays)) > 400
    assert max(backoff_delay(30, 0.5, 2.0, None, rng) for _ in range(100)) <= 2.0
    assert min(backoff_delay(0, 0.5, 60.0, 7.0, rng) for _ in range(100)) == 7.0
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_after_seconds({"retry-after": date}) <= 31
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None


def test_budget_reservations_from_many_threads_never_pass_the_limits():
    budget = Budget(max_calls=37, max_tokens=0)
    granted = []

    def worker():
        for _ in range(50):
            if budget.reserve(10) is None:
                granted.append(1)
                budget.settle(10, 3)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == budget.calls == 37 and budget.tokens == 37 * 3 and budget.reserved == 0
    tokens = Budget(max_tokens=100)
    stop = threading.Event()
    stop.set()
    assert tokens.reserve(60) is None and tokens.reserve(60, stop) == "stopped"  # the in-flight 60 counts
    assert tokens.reserve(101) == "max_tokens"
    threading.Timer(0.2, tokens.settle, (60, 30)).start()
    assert tokens.reserve(60) is None  # waited for the in-flight attempt to settle
    assert tokens.reserve(71) == "max_tokens" and tokens.reserve(11, stop) == "stopped"
    assert tokens.reserve(10) is None


def _answer(content, finish="stop"):
    return parse_body(json.dumps({"choices": [{"message": {"content": content}, "finish_reason": finish}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 2}}))


@pytest.mark.parametrize("content, kind, reason", [
    (GOOD, "cot", None),
    (GOOD.replace("$\\boxed{21}$", "21"), "cot", "no_final_answer"),
    ("short", "cot", "too_short"),
    ("A long enough problem statement here.\n\nno header, just text", "cot", "no_solution_header"),
    ("A problem about pens and their cost.\n\n## Code Solution\n```python\nprint(21\n```\nSo $\\boxed{21}$.", "tool",
     "code_syntax_error"),
    ("A problem about pens and their cost.\n\n## Code Solution\n```python\nprint(7 * 3)\n```\n```output\n21\n```\n"
     "So $\\boxed{21}$.", "tool", None),
    ("A problem about pens and their cost.\n\n## Code Solution\n```python\nprint(7 * 3)\n```\nIt is 21.", "tool",
     "no_boxed_answer"),
])
def test_validation_reasons(content, kind, reason):
    output, why = validate(_answer(content), kind, 20, 10000, True)
    assert why == reason
    if reason is None:
        assert output.split("\n\n", 1)[1].startswith("## Solution" if kind == "cot" else "## Code Solution")
    assert validate(_answer(GOOD, finish="length"), "cot", 20, 10000, True) == (None, "truncated")
    refused = parse_body(json.dumps({"choices": [{"message": {"content": None, "refusal": "no"}}]}))
    assert validate(refused, "cot", 20, 10000, True) == (None, "refused") and not refused.usage_known


def test_unknown_model_on_the_projects_own_server_is_named(tmp_path):
    """`serve` answers an unknown model with a 400 (code model_not_found), not OpenAI's 404."""
    from jz3_jax.decoding.factory import load_engine
    from jz3_jax.serve import build_server

    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")),
                          ["serve.port=0", "engine.max_batch=2", "engine.max_seq_len=64"])
    server, _ = build_server(load_engine(cfg, LOGGER), cfg, LOGGER)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        snippets = write_snippets(tmp_path / "snippets.jsonl", [""])
        with pytest.raises(TeacherError, match="does not know model 'gpt-9'"):
            run_distill(tmp_path, snippets, server.url + "/v1", "teacher.model=gpt-9")
    finally:
        server.close()
        thread.join(10)


def test_sigterm_finishes_in_flight_requests_writes_the_outputs_and_exits_143(teacher, tmp_path):
    teacher.delay = 0.3
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 30)
    command = [sys.executable, "-m", "jz3_jax.launch", "distill", "--config", "configs/tiny.py",
               *overrides(tmp_path, snippets, teacher.url, "distill.concurrency=2")]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(extra={KEY_ENV: KEY}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and teacher.total < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, proc.stderr.read()
    report = json.loads((tmp_path / "distill" / "report.json").read_text())
    assert report["stopped_by"] == "sigterm" and 0 < report["records"] < 30
    assert report["records"] == sum(teacher.answered.values()) == len(read_jsonl(tmp_path / "distill" / "kd.jsonl"))
