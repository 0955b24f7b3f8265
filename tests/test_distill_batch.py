"""`distill.mode=batch` against a loopback provider with the Files and Batches endpoints.

The fake provider (on test_distill's fake chat endpoint, which answers sync requests) counts server
side each request's (custom_id's) batch submissions and answers (good 200 lines plus sync answers).
Snippet scripts like `[[b429,b500]]` fault a request's batch lines in order: b429, b500 (error
lines), bbad (a 200 whose body is not a chat completion). Provider faults: `expire` (batches expire
half done), `drop_uploads` / `drop_creates` (the connection drops during an upload, or after a batch
was created), `hold` (batches stay in progress), `no_batches` (404 on /v1/batches); an unknown batch
id gets a 404.
"""

from __future__ import annotations

import collections
import email.parser
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import REPO_ROOT, run_launch, subprocess_env
from test_distill import (GOOD, KEY, KEY_ENV, MODEL, SCRIPT, FakeTeacher, _Handler, overrides, read_jsonl,
                          run_distill, write_snippets)

from jz3_jax.config import apply_overrides, load_config
from jz3_jax.distill.batch import input_line, pack
from jz3_jax.errors import TeacherError
from jz3_jax.distill.requests import build_requests
from jz3_jax.errors import UserError
from jz3_jax.prompts.plan import PromptPlan
from jz3_jax.prompts.snippets import read_snippets

FAST = ("distill.mode=batch", "distill.batch_poll_s=0.05")


def good_body(attempt: int) -> dict:
    """The same answer the sync fake sends."""
    return {"id": f"chatcmpl-b{attempt}", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": GOOD}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}


class FakeProvider(FakeTeacher):
    """FakeTeacher plus /v1/files and /v1/batches."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.submitted: collections.Counter = collections.Counter()  # custom_id -> batch submissions
        self.batch_paid: collections.Counter = collections.Counter()  # prompt -> good 200 batch lines
        self.batch_attempts: collections.Counter = collections.Counter()  # prompt -> batch lines processed
        self.expire = self.drop_uploads = self.drop_creates = 0
        self.polls_to_finish = 2
        self.hold = False
        self.no_batches = False
        super().__init__(handler=_BatchHandler)

    def paid(self, prompt: str) -> int:
        return self.batch_paid[prompt] + self.answered[prompt]

    def new_file(self, data: bytes) -> str:
        with self.lock:
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = data
        return file_id

    def new_batch(self, input_file_id: str, metadata: dict) -> dict:
        lines = [json.loads(line) for line in self.files[input_file_id].decode().splitlines() if line.strip()]
        with self.lock:
            batch_id = f"batch_{len(self.batches)}"
            batch = {"id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
                     "input_file_id": input_file_id, "completion_window": "24h", "status": "in_progress",
                     "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                     "request_counts": {"total": len(lines), "completed": 0, "failed": 0}, "metadata": metadata,
                     "polls": 0, "lines": lines}
            self.batches[batch_id] = batch
            self.submitted.update(line["custom_id"] for line in lines)
        return batch

    def advance(self, batch: dict) -> None:
        """A retrieve: finish the batch after `polls_to_finish` polls (unless held)."""
        with self.lock:
            batch["polls"] += 1
            if batch["status"] != "in_progress" or self.hold or batch["polls"] < self.polls_to_finish:
                return
            expire = self.expire > 0
            self.expire -= expire
        lines = batch["lines"]
        done = lines[:len(lines) // 2] if expire else lines
        out, err = [], []
        for line in done:
            self._line(line, out, err)
        for line in lines[len(done):]:
            err.append({"id": "r", "custom_id": line["custom_id"], "response": None,
                        "error": {"code": "batch_expired", "message": "This request could not be executed"}})
        ok = sum(1 for o in out if o["response"]["status_code"] == 200)
        batch.update(status="expired" if expire else "completed",
                     request_counts={"total": len(lines), "completed": ok, "failed": len(lines) - ok},
                     output_file_id=self.new_file("".join(json.dumps(o) + "\n" for o in out).encode()) if out else None,
                     error_file_id=self.new_file("".join(json.dumps(e) + "\n" for e in err).encode()) if err else None)

    def _line(self, line: dict, out: list, err: list) -> bool:
        """Answer one input line into the output or error file."""
        prompt = line["body"]["messages"][0]["content"]
        with self.lock:
            self.batch_attempts[prompt] += 1
            attempt = self.batch_attempts[prompt]
        match = SCRIPT.search(prompt)
        script = [f for f in match.group(1).split(",") if f.startswith("b")] if match else []
        fault = script[attempt - 1] if attempt <= len(script) else "ok"
        record = {"id": f"req-{attempt}", "custom_id": line["custom_id"], "error": None}
        if fault in ("b429", "b500"):
            status = int(fault[1:])
            err.append({**record, "response": {"status_code": status, "body": {"error": {"message": "no"}}}})
            return False
        if fault == "bbad":
            out.append({**record, "response": {"status_code": 200, "body": "<html>proxy error</html>"}})
            return True
        with self.lock:
            self.batch_paid[prompt] += 1
        out.append({**record, "response": {"status_code": 200, "body": good_body(attempt)}})
        return True


class _BatchHandler(_Handler):
    server: FakeProvider

    def _json(self, body: dict) -> None:
        self._send(200, json.dumps(body).encode())

    _public = staticmethod(lambda batch: {k: v for k, v in batch.items() if k not in ("polls", "lines")})

    def do_GET(self) -> None:
        server, parts = self.server, self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["v1", "batches"] and server.no_batches:
            return self._error(404, "Not found")
        if parts[:2] == ["v1", "batches"] and len(parts) == 2:
            data = [self._public(b) for b in reversed(list(server.batches.values()))]
            return self._json({"object": "list", "data": data, "has_more": False})
        if parts[:2] == ["v1", "batches"]:
            batch = server.batches.get(parts[2])
            if batch is None:
                return self._error(404, f"No batch with id {parts[2]}")
            server.advance(batch)
            return self._json(self._public(batch))
        if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            return self._send(200, server.files[parts[2]])
        return self._error(404, "Not found")

    def do_POST(self) -> None:
        server, path = self.server, self.path.split("?")[0].rstrip("/")
        if path == "/v1/chat/completions":
            return super().do_POST()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if path == "/v1/files":
            with server.lock:
                drop = server.drop_uploads > 0
                server.drop_uploads -= drop
            if drop:
                self.close_connection = True
                return None
            message = email.parser.BytesParser().parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            data = next(p.get_payload(decode=True) for p in message.get_payload() if p.get_param("name",
                        header="content-disposition") == "file")
            file_id = server.new_file(data)
            return self._json({"id": file_id, "object": "file", "bytes": len(data), "created_at": 0,
                               "filename": "input.jsonl", "purpose": "batch", "status": "processed"})
        if path == "/v1/batches":
            if server.no_batches:
                return self._error(404, "Not found")
            request = json.loads(body)
            batch = server.new_batch(request["input_file_id"], request.get("metadata") or {})
            with server.lock:
                drop = server.drop_creates > 0
                server.drop_creates -= drop
            if drop:  # created, but the answer is lost
                self.close_connection = True
                return None
            return self._json(self._public(batch))
        return self._error(404, "Not found")


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def provider():
    server = FakeProvider()
    yield server
    server.close()


def requests_of(run_dir: Path, snippets: Path, url: str) -> list:
    """The run's requests, as the stage builds them."""
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")), overrides(run_dir, snippets, url))
    plan = PromptPlan.build("distill", ["high_school"], ["cot"], "fixed", 0)
    return build_requests(read_snippets(snippets), plan, cfg.teacher)


def write_ledger(path: Path, *events: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(event) + "\n" for event in events))


def kd_text(run_dir: Path) -> str:
    return (run_dir / "distill" / "kd.jsonl").read_text()


FAULTS = ["[[b429]]", "[[b500]]", "[[bbad]]", "", "", "", "", "", "", ""]


def test_faults_every_request_answered_and_paid_once_and_kd_equals_sync(provider, tmp_path):
    snippets = write_snippets(tmp_path / "snippets.jsonl", FAULTS)
    digests = [r.hash for r in requests_of(tmp_path, snippets, provider.url)]
    # a batch recorded by an earlier run that the provider does not know (404): s8, s9 are asked again
    write_ledger(tmp_path / "distill" / "batches.jsonl",
                 {"event": "intent", "ledger_id": "old", "hashes": digests[8:], "input_sha256": "x"},
                 {"event": "submitted", "ledger_id": "old", "batch_id": "batch_gone"})
    provider.expire, provider.drop_uploads, provider.drop_creates = 1, 1, 1
    report = run_distill(tmp_path, snippets, provider.url, *FAST)
    prompts = list(provider.batch_attempts)
    assert len(prompts) == 10 and all(provider.paid(p) == 1 for p in prompts)  # answered and paid once
    assert provider.total == 0  # nothing went the sync way
    assert report["records"] == 10 and report["unfinished"] == 0 and report["stopped_by"] is None
    assert report["mode"] == "batch" and report["calls"] == sum(provider.submitted.values())
    # the batch that expired half done: its failed and expired requests went into a second batch once
    once, twice = digests[3:4] + digests[8:], digests[:3] + digests[4:8]
    assert all(provider.submitted[h] == 1 for h in once) and all(provider.submitted[h] == 2 for h in twice)
    failures = report["failures"]
    assert failures["rate_limited"] == 1 and failures["server_error"] == 1 and failures["malformed"] == 1
    assert failures["batch_expired"] == 4 and failures["unknown_batch"] == 2
    assert {b["status"] for b in report["batches"]} == {"unknown", "expired", "completed"}
    assert len(report["batches"]) == 4
    assert report["cost_estimate"] == pytest.approx(0.5 * (1000 * 2.5 + 200 * 10) / 1e6)
    assert len(list((tmp_path / "distill" / "cache" / "malformed").glob("*.json"))) == 1
    ledger = read_jsonl(tmp_path / "distill" / "batches.jsonl")
    assert sum(e["event"] == "submitted" for e in ledger) == 4 and len(provider.batches) == 3  # create not repeated
    sync_dir = tmp_path / "sync"
    sync = run_distill(sync_dir, snippets, provider.url)
    assert sync["mode"] == "sync" and sync["records"] == 10
    assert kd_text(sync_dir) == kd_text(tmp_path)
    rerun = run_distill(tmp_path, snippets, provider.url, *FAST)  # all cached: nothing is submitted
    assert rerun["calls"] == 0 and rerun["cache_hits"] == 10 and len(provider.batches) == 3


def test_sigkill_mid_batch_then_the_same_command_reattaches(provider, tmp_path):
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 6)
    provider.hold = True
    command = [sys.executable, "-m", "jz3_jax.launch", "distill", "--config", "configs/tiny.py",
               *overrides(tmp_path, snippets, provider.url, *FAST, "distill.batch_max_requests=4")]
    env = subprocess_env(extra={KEY_ENV: KEY})
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and \
            not (len(provider.batches) == 2 and all(b["polls"] for b in list(provider.batches.values()))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert sum(provider.submitted.values()) == 6 and not provider.batch_attempts
    provider.hold = False
    rerun = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert len(provider.batches) == 2 and set(provider.submitted.values()) == {1}  # no second submission
    assert all(provider.paid(p) == 1 for p in provider.batch_attempts) and len(provider.batch_attempts) == 6
    report = json.loads((tmp_path / "distill" / "report.json").read_text())
    assert report["records"] == 6 and report["calls"] == 0 and {b["status"] for b in report["batches"]} == {
        "completed"}
    reference = FakeProvider()  # an uninterrupted run over the same answers
    try:
        run_distill(tmp_path / "ref", snippets, reference.url, *FAST, "distill.batch_max_requests=4")
    finally:
        reference.close()
    assert kd_text(tmp_path / "ref") == kd_text(tmp_path)


def test_killed_between_create_and_its_record_finds_the_batch(provider, tmp_path):
    """The crash window the ledger cannot close by itself: the batch exists, its id was never written."""
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 3)
    digests = [r.hash for r in requests_of(tmp_path, snippets, provider.url)]
    lines = b"".join(input_line(r) for r in requests_of(tmp_path, snippets, provider.url))
    file_id = provider.new_file(lines)
    provider.new_batch(file_id, {"jz3_ledger": "L1"})
    write_ledger(tmp_path / "distill" / "batches.jsonl",
                 {"event": "intent", "ledger_id": "L1", "hashes": digests, "input_sha256": "x"},
                 {"event": "uploaded", "ledger_id": "L1", "file_id": file_id})
    report = run_distill(tmp_path, snippets, provider.url, *FAST)
    assert report["records"] == 3 and report["calls"] == 0
    assert len(provider.batches) == 1 and set(provider.submitted.values()) == {1}
    ledger = read_jsonl(tmp_path / "distill" / "batches.jsonl")
    assert [e.get("recovered") for e in ledger if e["event"] == "submitted"] == [True]


def test_sigterm_leaves_the_batches_running_exits_143_and_a_rerun_reattaches(provider, tmp_path):
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 4)
    provider.hold = True

    def terminate():
        deadline = time.time() + 60
        while time.time() < deadline and not any(b["polls"] for b in list(provider.batches.values())):
            time.sleep(0.01)
        signal.raise_signal(signal.SIGTERM)  # delivered to the main thread, as from outside

    threading.Thread(target=terminate, daemon=True).start()
    with pytest.raises(SystemExit) as exit_info:
        run_distill(tmp_path, snippets, provider.url, *FAST)
    assert exit_info.value.code == 143
    report = json.loads((tmp_path / "distill" / "report.json").read_text())
    assert report["stopped_by"] == "sigterm" and report["records"] == 0 and report["calls"] == 4
    assert [b["status"] for b in provider.batches.values()] == ["in_progress"]  # left running
    provider.hold = False
    report = run_distill(tmp_path, snippets, provider.url, *FAST)
    assert report["records"] == 4 and report["calls"] == 0 and len(provider.batches) == 1
    assert set(provider.submitted.values()) == {1}


def test_a_cache_shared_by_sync_and_batch_runs_never_asks_twice(provider, tmp_path):
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 6)
    cache = f"distill.cache_dir={tmp_path / 'cache'}"
    assert run_distill(tmp_path / "a", snippets, provider.url, cache, "distill.num_snippets=3")["records"] == 3
    assert provider.total == 3
    digests = [r.hash for r in requests_of(tmp_path, snippets, provider.url)]
    report = run_distill(tmp_path / "b", snippets, provider.url, cache, *FAST)
    assert report["records"] == 6 and report["cache_hits"] == 3
    assert set(provider.submitted) == set(digests[3:]) and set(provider.submitted.values()) == {1}
    report = run_distill(tmp_path / "a", snippets, provider.url, cache)  # sync again: all cached
    assert report["calls"] == 0 and provider.total == 3 and report["records"] == 6
    assert all(provider.paid(p) == 1 for p in list(provider.attempts) + list(provider.batch_attempts))
    assert kd_text(tmp_path / "a") == kd_text(tmp_path / "b")


def test_max_calls_counts_submissions_and_a_higher_budget_submits_the_rest(provider, tmp_path):
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 12)
    report = run_distill(tmp_path, snippets, provider.url, *FAST, "distill.max_calls=5")
    assert sum(provider.submitted.values()) == 5 and report["calls"] == 5
    assert report["stopped_by"] == "max_calls" and report["records"] == 5 and report["unfinished"] == 7
    assert len(read_jsonl(tmp_path / "distill" / "kd.jsonl")) == 5
    report = run_distill(tmp_path, snippets, provider.url, *FAST, "distill.max_calls=100")
    assert sum(provider.submitted.values()) == 12 and set(provider.submitted.values()) == {1}
    assert report["calls"] == 7 and report["records"] == 12 and report["stopped_by"] is None


def test_max_tokens_reserves_the_bound_at_submission_and_cuts_the_batch(provider, tmp_path):
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 4)
    bound = max(r.token_bound for r in requests_of(tmp_path, snippets, provider.url))
    report = run_distill(tmp_path, snippets, provider.url, *FAST, f"distill.max_tokens={2 * bound}")
    # two fit at once; their answers settle at 120 tokens each, which frees room for the other two
    assert max(len(b["lines"]) for b in provider.batches.values()) == 2
    assert report["records"] == 4 and report["prompt_tokens"] + report["completion_tokens"] == 480


def test_no_batch_endpoint_names_the_mode_and_the_url_and_exits_2(provider, tmp_path):
    provider.no_batches = True
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 2)
    with pytest.raises(TeacherError, match=r"distill.mode=batch.*/v1/batches answers 404"):
        run_distill(tmp_path, snippets, provider.url, *FAST)
    assert not provider.files  # refused before anything was uploaded
    result = run_launch("distill", "--config", "configs/tiny.py", *overrides(tmp_path, snippets, provider.url, *FAST),
                        env={KEY_ENV: KEY})
    assert result.returncode == 2 and "distill.mode=batch" in result.stderr and provider.url in result.stderr


def test_an_oversized_line_is_split_never_rejected_and_a_failed_one_falls_back_to_sync(provider, tmp_path):
    snippets = write_snippets(tmp_path / "snippets.jsonl", ["[[b429]]", "", ""])
    report = run_distill(tmp_path, snippets, provider.url, *FAST, "distill.batch_max_bytes=100",
                         "distill.batch_fallback=sync")
    assert report["records"] == 3 and len(provider.batches) == 3
    assert all(len(b["lines"]) == 1 for b in provider.batches.values())
    assert provider.total == 1 and all(provider.paid(p) == 1 for p in provider.batch_attempts)  # 429 -> sync
    assert report["cost_estimate"] == pytest.approx((1 + 2 * 0.5) * (100 * 2.5 + 20 * 10) / 1e6)


def test_pack_respects_both_limits(tmp_path, provider):
    snippets = write_snippets(tmp_path / "snippets.jsonl", [""] * 7)
    requests = requests_of(tmp_path, snippets, provider.url)
    assert [len(f) for f in pack(requests, 3, 10**9)] == [3, 3, 1]
    size = len(input_line(requests[0]))
    assert [len(f) for f in pack(requests, 100, 2 * size + 5)] == [2, 2, 2, 1]
    assert [len(f) for f in pack(requests, 100, 1)] == [1] * 7


def test_pipeline_refuses_the_local_teacher_in_batch_mode(tmp_path):
    from jz3_jax.pipeline.stage import _check_inputs, plan

    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")),
                          [f"run_dir={tmp_path}", "pipeline.serve_teacher=true", "distill.mode=batch",
                           "pipeline.stages=corpus,distill_initial"])
    planned, chosen = plan(cfg)
    by_name = {step.name: (step, step_cfg, digest) for step, step_cfg, digest in planned}
    with pytest.raises(UserError, match="serve_teacher=true cannot serve distill_initial with distill.mode=batch"):
        _check_inputs(tmp_path, chosen, by_name, None)
