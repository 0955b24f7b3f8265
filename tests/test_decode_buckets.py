"""Prefill buckets and warm-up: after `serve`'s warm-up no request compiles anything (counted
with jax.monitoring's backend-compile events), on one device and on a 2 x 2 engine mesh."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from helpers import REPO_ROOT, last_json_line, run_in_subprocess
from jz3_jax.config import apply_overrides, load_config
from jz3_jax.decoding.compiles import count_compiles
from jz3_jax.decoding.buckets import dispatch_slots, row_buckets
from jz3_jax.decoding.engine import doubling_buckets, prefill_shapes
from jz3_jax.decoding.factory import load_engine
from jz3_jax.serve import build_server
from jz3_jax.serve.server import warm_up

LOGGER = logging.getLogger("jz3_jax.test_decode_buckets")
MAX_SEQ_LEN, MAX_BATCH = 128, 4
OVERRIDES = ["serve.port=0", "serve.max_queue=64", f"engine.max_batch={MAX_BATCH}",
             f"engine.max_seq_len={MAX_SEQ_LEN}", "engine.prompt_bucket=16", "engine.max_top_k=16",
             "sampling.max_new_tokens=4"]


def post(url: str, body: dict) -> tuple[int, dict | str]:
    """POST `body` as JSON: the status and the JSON answer (or the raw text of a stream)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text, kind = response.status, response.read().decode(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, text, kind = error.code, error.read().decode(), error.headers["Content-Type"]
    return status, json.loads(text) if kind.startswith("application/json") else text


def test_bucket_sets_are_small_and_bounded():
    assert doubling_buckets(16, 128) == (16, 32, 64, 128)
    assert doubling_buckets(64, 2048) == (64, 128, 256, 512, 1024, 2048)
    assert doubling_buckets(64, 100) == (64, 100) and doubling_buckets(64, 64) == (64,) and doubling_buckets(64, 8) == (8,)


@pytest.mark.parametrize("max_rows,shards", [(1, 1), (16, 1), (64, 1), (64, 4), (100, 1), (256, 2), (6, 2)])
def test_decode_row_buckets_bound_the_padding(max_rows, shards):
    """Every count of running rows has a bucket, a multiple of the row shards, that pads it by at
    most an eighth of `max_rows` (or to the smallest bucket)."""
    buckets = row_buckets(max_rows, shards)
    assert list(buckets) == sorted(set(buckets)) and buckets[-1] == max_rows
    assert all(b % shards == 0 for b in buckets if b != max_rows)
    assert len(buckets) <= 12
    for running in range(1, max_rows + 1):
        bucket = next(b for b in buckets if b >= running)
        assert bucket - running <= max(buckets[0], shards * -(-max_rows // (8 * shards)))


def test_dispatch_slots_are_the_running_rows_then_free_ones():
    slots = dispatch_slots([5, 2, 9], (4, 8, 12), 12)
    assert slots[:3] == [5, 2, 9] and len(slots) == 4 and len(set(slots)) == 4 and slots[3] not in (5, 2, 9)
    assert sorted(dispatch_slots(list(range(12)), (4, 8, 12), 12)) == list(range(12))


def test_prefill_shapes_are_at_most_two_per_width():
    shapes = prefill_shapes(prompt_bucket=64, max_seq_len=2048, max_batch=16)  # the engine defaults
    assert shapes == [(1, 64), (16, 64), (1, 128), (16, 128), (1, 256), (8, 256), (1, 512), (4, 512),
                      (1, 1024), (2, 1024), (1, 2048)]
    assert all(rows * width <= 2048 or rows == 1 for rows, width in shapes)  # no prefill beyond one context


@pytest.fixture(scope="module")
def warm_server():
    """The tiny model served as `serve` runs it: loaded, warmed up, then listening."""
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")), OVERRIDES)
    loaded = load_engine(cfg, LOGGER)
    compiled = warm_up(loaded.engine, LOGGER)
    server, _ = build_server(loaded, cfg, LOGGER)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, compiled
    finally:
        server.close()
        thread.join(10)


def _body(i: int, length: int) -> dict:
    """A completion request of `length` prompt tokens (ids, so the length is exact) with mixed settings."""
    rng = np.random.default_rng(i)
    body = {"prompt": rng.integers(0, 256, length).tolist(), "max_tokens": min(4, MAX_SEQ_LEN - length),
            "seed": i, "n": 1 + i % 2, "stream": i % 3 == 0}
    body.update([{"temperature": 0.0}, {"temperature": 1.0, "top_k": 16}, {"temperature": 0.7, "top_p": 0.9},
                 {"temperature": 1.0, "top_k": 5, "top_p": 0.5}, {"temperature": 1.0}][i % 5])
    return body


def test_no_request_compiles_after_serve_warm_up(warm_server):
    server, compiled = warm_server
    engine = server.worker.engine
    assert compiled >= len(engine.prefill_shapes()) + 1  # each prefill bucket and the decode step
    lengths = sorted({1, 2, 15, 16, 17, 33, 64, 65, 100, MAX_SEQ_LEN - 1, *range(3, MAX_SEQ_LEN, 7)})
    with count_compiles() as log:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:  # together: groups of 1..max_batch prompts
            answers = list(pool.map(lambda args: post(server.url + "/v1/completions", _body(*args)),
                                    enumerate(lengths)))
        for i, length in enumerate(lengths[:8]):  # and one at a time: single-prompt prefills
            answers.append(post(server.url + "/v1/completions", _body(i, length)))
    assert [status for status, _ in answers] == [200] * len(answers), answers
    assert log.count == 0, log.names


def test_top_k_above_max_top_k_is_a_400(warm_server):
    server, _ = warm_server
    status, body = post(server.url + "/v1/completions", {"prompt": "hi", "max_tokens": 2, "top_k": 17})
    assert status == 400, body
    assert "top_k=17 exceeds this engine's limit of 16 (engine.max_top_k)" in body["error"]["message"]
    assert post(server.url + "/v1/completions", {"prompt": "hi", "max_tokens": 2, "top_k": 16})[0] == 200


MESH_SNIPPET = r"""
import json, logging
import numpy as np
from jz3_jax.config import apply_overrides, load_config
from jz3_jax.decoding import Request, SamplingParams
from jz3_jax.decoding.compiles import count_compiles
from jz3_jax.decoding.factory import load_engine, warm_up

cfg = apply_overrides(load_config("configs/tiny.py"), ["engine.max_batch=4", "engine.max_seq_len=64",
                      "engine.prompt_bucket=16", "engine.mesh.data=2", "engine.mesh.tensor=2"])
loaded = load_engine(cfg, logging.getLogger("test"))
engine = loaded.engine
compiled = warm_up(engine, logging.getLogger("test"))
rng = np.random.default_rng(0)
requests = [Request(rng.integers(0, 256, n).tolist(),
                    SamplingParams(temperature=float(i % 2), top_k=[0, 7][i % 2], top_p=[1.0, 0.8][i % 3 == 0],
                                   max_new_tokens=min(5, 64 - n), seed=i))
            for i, n in enumerate([1, 63, 16, 17, 40, 2, 33, 5, 31, 60])]
with count_compiles() as log:
    done = engine.generate(requests[:7])
    done += engine.generate(requests[7:8])
    done += engine.generate(requests[8:])
print(json.dumps({"mesh": dict(loaded.mesh.shape), "warm_up": compiled, "after": log.names,
                  "lengths": [len(g.token_ids) for g in done]}))
"""


def test_no_compile_after_warm_up_on_a_data_and_tensor_mesh():
    result = last_json_line(run_in_subprocess(MESH_SNIPPET, devices=4))
    assert result["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert result["warm_up"] > 0 and result["after"] == []
    assert result["lengths"] == [min(5, 64 - n) for n in [1, 63, 16, 17, 40, 2, 33, 5, 31, 60]]
