"""The `serve` stage's ASGI layer: API keys, body limits, disconnects, metrics, load with bad clients, drain."""

from __future__ import annotations

import http.client
import json
import logging
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import REPO_ROOT, subprocess_env
from jz3_jax.errors import UserError
from jz3_jax.serve import auth
from test_serve import TINY_OVERRIDES, assert_error, post, serving, sse_events

LOGGER = logging.getLogger("jz3_jax.test_serve_asgi")
KEY_ENV = "JZ3_SERVE_TEST_KEY"


def call(url: str, method: str = "GET", body=None, headers: dict | None = None, timeout: float = 60):
    """One request; (status, decoded JSON or raw text)."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text, kind = response.status, response.read().decode(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, text, kind = error.code, error.read().decode(), error.headers["Content-Type"]
    return status, json.loads(text) if kind.startswith("application/json") else text


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """`/metrics` parsed: sample name -> {sorted label items: value}."""
    status, text = call(url + "/metrics")
    assert status == 200
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def requests_count(samples, endpoint: str, status: str) -> float:
    return samples["jz3_serve_requests_total"].get((("endpoint", endpoint), ("status", status)), 0.0)


def raw_request(body: bytes, path: str = "/v1/completions") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_response(sock: socket.socket, timeout: float = 60) -> bytes:
    """Everything up to the end of one response: `[DONE]` of a stream or a whole Content-Length body."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        if not chunk or b"data: [DONE]" in data or (length and len(rest) >= int(length.group(1))):
            return data


# --- auth ---------------------------------------------------------------------------------------------


def test_api_key_guards_v1_and_leaves_health_open(monkeypatch):
    import openai

    monkeypatch.setenv(KEY_ENV, "s3cret-key")
    with serving("tiny.py", TINY_OVERRIDES + [f"serve.api_key_env={KEY_ENV}"]) as (server, _):
        body = {"prompt": "2+2=", "max_tokens": 4}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"},
                        {"Authorization": "Bearer s3cret-key-and-more"}):
            status, answer = call(server.url + "/v1/completions", "POST", body, headers)
            assert_error(status, answer, 401)
            assert answer["error"]["code"] == "invalid_api_key"
        assert_error(*call(server.url + "/v1/models"), 401)
        assert call(server.url + "/health")[0] == 200
        status, answer = call(server.url + "/v1/completions", "POST", body, {"Authorization": "Bearer s3cret-key"})
        assert status == 200 and answer["choices"][0]["finish_reason"] in ("stop", "length")

        client = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret-key", max_retries=0, timeout=60)
        completion = client.completions.create(model="llama-random", prompt="hi", max_tokens=3)
        assert completion.usage.completion_tokens <= 3 and completion.choices[0].finish_reason in ("stop", "length")
        chunks = list(client.completions.create(model="llama-random", prompt="hi", max_tokens=3, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_api_key_env_unset_is_an_error_and_open_binds_warn(monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(UserError, match=KEY_ENV):
        auth.api_key(KEY_ENV)
    assert auth.api_key("") is None
    with caplog.at_level(logging.WARNING):
        assert auth.warn_if_open("0.0.0.0", None, LOGGER)
    assert "without an API key" in caplog.text
    assert not auth.warn_if_open("0.0.0.0", "key", LOGGER)
    for host in ("127.0.0.1", "::1", "localhost"):
        assert not auth.warn_if_open(host, None, LOGGER)


# --- limits and disconnects ------------------------------------------------------------------------------


def test_bodies_over_max_body_bytes_get_413():
    with serving("tiny.py", TINY_OVERRIDES + ["serve.max_body_bytes=2000"]) as (server, _):
        status, answer = call(server.url + "/v1/completions", "POST", {"prompt": "x" * 3000})
        assert_error(status, answer, 413)
        # chunked: no Content-Length to refuse up front, the limit holds while reading
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        try:
            connection.request("POST", "/v1/completions", body=iter([b'{"prompt": "', b"y" * 1500, b"z" * 1500, b'"}']),
                               headers={"Content-Type": "application/json"}, encode_chunked=True)
            response = connection.getresponse()
            assert_error(response.status, json.loads(response.read()), 413)
        finally:
            connection.close()
        assert call(server.url + "/v1/completions", "POST", {"prompt": "x" * 100, "max_tokens": 2})[0] == 200


def _slow_engine(loaded):
    """Count engine dispatches and the dispatch at which each cancel lands; each dispatch takes 50 ms
    (a slow device), so a request of 100 tokens is still running when its client leaves (greedy
    "hello" on the tiny model meets no EOS in 400 tokens)."""
    engine, log = loaded.engine, {"steps": 0, "cancels": []}
    step, cancel = engine.step, engine.cancel

    def slow_step():
        time.sleep(0.05)
        events = step()
        log["steps"] += 1
        return events

    def recording_cancel(request):
        held = cancel(request)
        log["cancels"].append((log["steps"], held))
        return held

    engine.step, engine.cancel = slow_step, recording_cancel
    return log


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_has_its_rows_cancelled_within_one_dispatch(stream):
    with serving("tiny.py", TINY_OVERRIDES, _slow_engine) as (server, log):
        body = json.dumps({"prompt": "hello", "max_tokens": 100, "n": 3, "temperature": 0, "stream": stream}).encode()
        sock = socket.create_connection(server.server_address[:2], timeout=30)
        sock.sendall(raw_request(body))
        if stream:
            assert sock.recv(100).startswith(b"HTTP/1.1 200")  # streaming has begun
        deadline = time.monotonic() + 30
        while log["steps"] < 2 and time.monotonic() < deadline:  # the rows are decoding
            time.sleep(0.005)
        sock.close()
        steps_at_close = log["steps"]
        while len(log["cancels"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(log["cancels"]) == 3 and all(held for _, held in log["cancels"]), log
        # the dispatch running when the client left may finish; the next one no longer has the rows
        assert max(at for at, _ in log["cancels"]) <= steps_at_close + 1, (steps_at_close, log)
        LOGGER.info("stream=%s: client left during dispatch %d, rows cancelled after dispatch %d", stream,
                    steps_at_close + 1, max(at for at, _ in log["cancels"]))
        assert server.worker.engine.pending == 0
        assert call(server.url + "/v1/completions", "POST", {"prompt": "2+2=", "max_tokens": 2})[0] == 200
        assert requests_count(scrape(server.url), "/v1/completions", "200" if stream else "499") >= 1


# --- metrics ---------------------------------------------------------------------------------------------


def test_metrics_parse_and_count_what_was_sent():
    with serving("tiny.py", TINY_OVERRIDES) as (server, _):
        usage = {"prompt": 0, "completion": 0}
        for stream in (False, False, True):
            body = {"prompt": "count me", "max_tokens": 6, "stream": stream}
            if stream:
                body["stream_options"] = {"include_usage": True}
            status, answer = call(server.url + "/v1/completions", "POST", body)
            assert status == 200
            got = sse_events(answer)[-2]["usage"] if stream else answer["usage"]
            usage["prompt"] += got["prompt_tokens"]
            usage["completion"] += got["completion_tokens"]
        for bad in (b"{nope", {"prompt": "hi", "n": 0}):
            assert call(server.url + "/v1/completions", "POST", bad)[0] == 400
        assert call(server.url + "/v1/nowhere")[0] == 404
        assert call(server.url + "/v1/models")[0] == 200
        samples = scrape(server.url)
        assert requests_count(samples, "/v1/completions", "200") == 3
        assert requests_count(samples, "/v1/completions", "400") == 2
        assert requests_count(samples, "other", "404") == 1
        assert requests_count(samples, "/v1/models", "200") == 1
        assert sum(samples["jz3_serve_requests_total"].values()) == 7  # this scrape is counted once answered
        assert samples["jz3_serve_prompt_tokens_total"][()] == usage["prompt"]
        assert samples["jz3_serve_generation_tokens_total"][()] == usage["completion"]
        assert samples["jz3_serve_time_to_first_token_seconds_count"][()] == 3
        latency = samples["jz3_serve_request_latency_seconds_count"]
        assert latency[(("endpoint", "/v1/completions"),)] == 5
        assert samples["jz3_serve_queue_depth"][()] == 0 and samples["jz3_serve_running_rows"][()] == 0
        assert samples["jz3_serve_requests_in_flight"][()] == 1  # the scrape itself
        assert samples["jz3_serve_generation_tokens_per_second"][()] > 0
        assert requests_count(scrape(server.url), "/metrics", "200") == 1


# --- load with bad clients ----------------------------------------------------------------------------------

MALFORMED = [b"{not json", b"[1, 2]", b'{"prompt": 5}', b'{"prompt": "hi", "n": "x"}', b'{"prompt": "hi", "stream": 1}']


def _well_formed(url, i, start, results):
    try:
        start.wait()
        body = {"prompt": f"request {i}", "max_tokens": 8, "temperature": 1.0, "seed": i, "stream": i % 3 == 0}
        results[i] = post(url + "/v1/completions", body, timeout=120)
    except Exception as error:  # reported by the test, never lost in a thread
        results[i] = error


def _malformed(url, i, start, results):
    start.wait()
    results[i] = call(url + "/v1/completions", "POST", MALFORMED[i % len(MALFORMED)], timeout=120)


def _leaver(address, i, start):
    start.wait()
    stream = i % 2 == 0
    body = json.dumps({"prompt": f"leave {i}", "max_tokens": 100, "stream": stream}).encode()
    with socket.create_connection(address, timeout=60) as sock:
        sock.sendall(raw_request(body))
        if stream:
            sock.recv(1)  # wait for the stream (or a 429) to begin
        else:
            time.sleep(0.01 * (i % 5))


def _slow(address, i, start, results, hold, holding):
    """Send the request a byte at a time, pausing part-way (in the headers for even `i`, in the body
    for odd) until `hold` is set; then send the rest and read the answer."""
    try:
        start.wait()
        data = raw_request(json.dumps({"prompt": f"slow {i}", "max_tokens": 4}).encode())
        pause_at = data.index(b"\r\n") + 5 if i % 2 == 0 else len(data) - 10
        with socket.create_connection(address, timeout=60) as sock:
            for at, byte in enumerate(data):
                if at == pause_at:
                    holding.release()
                    hold.wait(120)
                sock.sendall(bytes([byte]))
                time.sleep(0.01)
            results[i] = read_response(sock)
    except Exception as error:
        results[i] = error


def test_200_requests_with_malformed_leaving_and_slow_clients():
    before = set(threading.enumerate())
    n, n_bad, n_leave, n_slow = 200, 20, 20, 5
    with serving("tiny.py", TINY_OVERRIDES) as (server, _):
        url, address = server.url, server.server_address[:2]
        results = [None] * n
        bad, slow = [None] * n_bad, [None] * n_slow
        hold, holding = threading.Event(), threading.Semaphore(0)
        start = threading.Barrier(n + n_bad + n_leave + n_slow)
        threads = ([threading.Thread(target=_well_formed, args=(url, i, start, results)) for i in range(n)]
                   + [threading.Thread(target=_malformed, args=(url, i, start, bad)) for i in range(n_bad)]
                   + [threading.Thread(target=_leaver, args=(address, i, start)) for i in range(n_leave)]
                   + [threading.Thread(target=_slow, args=(address, i, start, slow, hold, holding)) for i in range(n_slow)])
        # compile the engine's prefill for 1..max_batch new prompts first: a compile mid-burst stalls everyone
        for thread in threads:
            thread.start()
        for thread in threads[:-n_slow]:
            thread.join(180)
        for _ in range(n_slow):  # (they all got part-way in at the start of the burst)
            assert holding.acquire(timeout=60)
        # slow clients stalled nobody: all else was answered while they held half-sent requests
        assert not any(thread.is_alive() for thread in threads[:-n_slow]) and all(s is None for s in slow)
        probe = time.monotonic()
        assert post(url + "/v1/completions", {"prompt": "probe", "max_tokens": 2})[0] == 200
        LOGGER.info("a request beside 5 half-sent ones: answered in %.3fs", time.monotonic() - probe)
        hold.set()
        for thread in threads[-n_slow:]:
            thread.join(180)
        assert not any(thread.is_alive() for thread in threads)

        statuses = {"ok": 0, "429": 0}
        for i, result in enumerate(results):
            assert isinstance(result, tuple), f"request {i}: {result!r}"
            status, body = result
            if status == 429:
                assert_error(status, body, 429, "rate_limit_error")
                statuses["429"] += 1
            elif i % 3 == 0:
                assert status == 200, body
                events = sse_events(body)
                assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
                statuses["ok"] += 1
            else:
                assert status == 200 and 1 <= body["usage"]["completion_tokens"] <= 8, body
                statuses["ok"] += 1
        assert statuses["ok"] >= 32
        for status, body in bad:
            assert_error(status, body, 400)
        for answer in slow:
            assert isinstance(answer, bytes) and re.match(rb"HTTP/1.1 (200|429) ", answer), answer
        assert post(url + "/v1/completions", {"prompt": "still up", "max_tokens": 2})[0] == 200

        deadline = time.monotonic() + 10
        while (server.worker.engine.pending or server.worker.running_rows) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.worker.engine.pending == 0 and server.worker.running_rows == 0
        samples = scrape(url)
        total = sum(v for k, v in samples["jz3_serve_requests_total"].items() if ("endpoint", "/v1/completions") in k)
        assert total == n + n_bad + n_leave + n_slow + 2
        assert requests_count(samples, "/v1/completions", "400") == n_bad
        assert requests_count(samples, "/v1/completions", "429") >= statuses["429"]
        LOGGER.info("load test: %s", statuses)
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leftover, leftover


# --- drain on SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(tmp_path):
    command = [sys.executable, "-m", "jz3_jax.launch", "serve", "--config", "configs/tiny.py", "serve.port=0",
               "engine.max_seq_len=128", "engine.prompt_bucket=16", "serve.drain_timeout_s=60",
               "--run-dir", str(tmp_path / "run")]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=stderr,
                                text=True)
        sockets = []
        try:
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
            url = re.fullmatch(r"serving llama-random on (http://127\.0\.0\.1:\d+)\n", lines.get(timeout=90)).group(1)
            host, port = url.removeprefix("http://").split(":")
            # Four requests in flight: accepted, their bodies half sent when the signal comes.
            requests = [raw_request(json.dumps({"prompt": f"drain {i}", "max_tokens": 6, "stream": i % 2 == 0}).encode())
                        for i in range(4)]
            for data in requests:
                sockets.append(socket.create_connection((host, int(port)), timeout=60))
                sockets[-1].sendall(data[:-5])
            deadline = time.monotonic() + 30
            while scrape(url)["jz3_serve_requests_in_flight"][()] < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            status, body = call(url + "/v1/completions", "POST", {"prompt": "too late", "max_tokens": 2})
            assert_error(status, body, 503, "server_error")
            for i, (sock, data) in enumerate(zip(sockets, requests)):
                sock.sendall(data[-5:])
                answer = read_response(sock)
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                if i % 2 == 0:
                    assert b"data: [DONE]" in answer and b'"error"' not in answer, answer
                else:
                    assert json.loads(answer.partition(b"\r\n\r\n")[2])["choices"][0]["finish_reason"]
            assert proc.wait(timeout=30) == 0, (tmp_path / "stderr.txt").read_text()
        finally:
            for sock in sockets:
                sock.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_close_leaves_no_threads_and_ends_idle_keep_alive_connections():
    """An idle keep-alive connection (as the openai client keeps) holds no thread and does not hold
    up `close()`; afterwards nothing the server started is left running."""
    before = set(threading.enumerate())
    with serving("tiny.py", TINY_OVERRIDES) as (server, _):
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        connection.request("GET", "/v1/models")
        assert connection.getresponse().read()
        started = set(threading.enumerate()) - before
        # the engine worker and the thread running the event loop; none per connection
        assert len(started) == 2 and "serve-engine" in {t.name for t in started}, started
        closing = time.monotonic()
    try:
        assert time.monotonic() - closing < 5
        assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]
        connection.sock.settimeout(5)
        assert connection.sock.recv(1) == b""  # the server closed the idle connection
    finally:
        connection.close()
