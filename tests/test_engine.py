"""The decoding engine: parity with transformers `generate`, continuous batching, sampling, stops."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_models import make_hf_model
from jz3_jax.checkpoint import load_model
from jz3_jax.runtime.config import DEFAULT_RULES, MeshConfig
from jz3_jax.decoding import Engine, Request, RequestError, SamplingParams
from jz3_jax.decoding.sampling import _filter_top_k_top_p
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules
from jz3_jax.tokenizer import load_tokenizer

RULES = parse_rules(DEFAULT_RULES)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=32)


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(MeshConfig())


@pytest.fixture(scope="module")
def tiny(mesh):
    """A random tiny Llama with the byte tokenizer (vocab 260, EOS 258)."""
    cfg = ModelConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, pad_token_id=256, bos_token_id=257, eos_token_id=258)
    model, _ = load_model(cfg, mesh, RULES, seed=3)
    return model, load_tokenizer("bytes")


@pytest.mark.parametrize("name", ["llama", "mistral_window", "qwen2"])
def test_greedy_equals_transformers_generate(name, mesh, tmp_path):
    hf = make_hf_model(name)
    hf.save_pretrained(tmp_path)
    model, cfg = load_model(ModelConfig(checkpoint=str(tmp_path)), mesh, RULES)
    prompts = [[5, 9, 33, 7], list(range(10, 31)), [3]]
    eos = hf.generation_config.eos_token_id  # tiny Qwen2 configs have none
    engine = Engine(model, max_batch=2, max_seq_len=96, eos_ids=[] if eos is None else [eos])
    results = engine.generate([Request(p, GREEDY) for p in prompts])
    for prompt, result in zip(prompts, results):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=0)
        expected = ref[0, len(prompt):].tolist()
        assert result.token_ids == expected
        assert result.finish_reason == ("stop" if expected[-1] == eos else "length")


def _mixed_requests(seed_base: int) -> list[Request]:
    rng = np.random.default_rng(0)
    lengths, new = [3, 20, 7, 40, 1, 17], [5, 30, 12, 3, 20, 9]
    requests = []
    for i, (n, m) in enumerate(zip(lengths, new)):
        prompt = rng.integers(0, 256, n).tolist()
        if i % 2:
            params = SamplingParams(temperature=0.0, max_new_tokens=m)
        else:
            params = SamplingParams(temperature=1.0, top_k=50 if i == 2 else 0, top_p=0.9 if i == 4 else 1.0,
                                    max_new_tokens=m, seed=seed_base + i)
        requests.append(Request(prompt, params, id=i))
    return requests


def test_continuous_batching_equals_each_request_alone(tiny):
    model, _ = tiny
    batched = Engine(model, max_batch=4, max_seq_len=80, steps_per_dispatch=4).generate(_mixed_requests(7))
    alone = Engine(model, max_batch=1, max_seq_len=80, steps_per_dispatch=3)
    for request, result in zip(_mixed_requests(7), batched):
        assert alone.generate([request])[0].token_ids == result.token_ids
        assert len(result.token_ids) == request.params.max_new_tokens  # no EOS id given: run to the limit
        assert result.finish_reason == "length"


def test_sampling_depends_on_the_seed_not_the_batch(tiny):
    model, _ = tiny
    engine = Engine(model, max_batch=8, max_seq_len=64)
    prompt = [1, 2, 3, 4, 5]
    sampled = SamplingParams(temperature=1.0, max_new_tokens=24, seed=11)
    again = engine.generate([Request(prompt, sampled), Request([9, 9], GREEDY), Request(prompt, sampled)])
    assert again[0].token_ids == again[2].token_ids
    other_seed = engine.generate([Request(prompt, SamplingParams(temperature=1.0, max_new_tokens=24, seed=12))])
    assert other_seed[0].token_ids != again[0].token_ids
    greedy = engine.generate([Request(prompt, SamplingParams(temperature=0.0, max_new_tokens=24))])[0].token_ids
    assert greedy != again[0].token_ids
    top1 = engine.generate([Request(prompt, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=24, seed=5))])
    assert top1[0].token_ids == greedy  # top-k 1 leaves only the argmax
    narrow = engine.generate([Request(prompt, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=24, seed=5))])
    assert narrow[0].token_ids == greedy  # a tiny nucleus keeps only the most likely token
    huge_k = engine.generate([Request(prompt, SamplingParams(temperature=1.0, top_k=2**40, max_new_tokens=24, seed=11))])
    assert huge_k[0].token_ids == again[0].token_ids  # top_k beyond the vocabulary = no filter


def test_top_p_one_keeps_every_token_beside_filtered_rows():
    """Rows asking for no filter lose nothing when a batch-mate's filter runs (float32 cumsums
    of a large vocabulary reach 1.0 before its tail)."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 49152)) * 3
    top_k, top_p = jnp.asarray([0, 40, 0, 0]), jnp.asarray([1.0, 1.0, 0.9, 1.0])
    filtered = np.asarray(_filter_top_k_top_p(logits, top_k, top_p))
    assert np.isfinite(filtered[[0, 3]]).all()
    assert np.isfinite(filtered[1]).sum() == 40
    kept = np.isfinite(filtered[2])
    probs = np.asarray(jax.nn.softmax(logits[2]))
    assert probs[kept].sum() >= 0.9 and probs[kept].sum() - probs[kept].min() < 0.9  # the smallest nucleus


def test_eos_and_stop_strings(tiny):
    model, tokenizer = tiny
    engine = Engine(model, max_batch=2, max_seq_len=64, eos_ids=[258], tokenizer=tokenizer)
    prompt = tokenizer.encode("Problem: 2+2")
    full = engine.generate([Request(prompt, SamplingParams(temperature=0.0, max_new_tokens=40))])[0]
    text = full.text
    printable = [i for i in range(2, len(text) - 1) if text[i:i + 2].isprintable() and "\ufffd" not in text[i:i + 2]]
    assert printable, f"no printable stop candidate in {text!r}"
    stop = text[printable[0]:printable[0] + 2]
    cut = engine.generate([Request(prompt, SamplingParams(temperature=0.0, max_new_tokens=40, stop=(stop,)))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.find(stop)]
    # the tokens end with the one that completes the stop string (later ones of the dispatch are dropped)
    upto = next(k for k in range(1, len(full.token_ids) + 1) if stop in tokenizer.decode(full.token_ids[:k]))
    assert cut.token_ids == full.token_ids[:upto]

    # Streaming: the text deltas of a request add up to its final text.
    deltas = []
    request = Request(prompt, SamplingParams(temperature=0.0, max_new_tokens=40, stop=(stop,)),
                      on_event=lambda e: deltas.append(e.text_delta))
    assert engine.generate([request])[0].text == "".join(deltas)

    # EOS: an engine told that the first greedy token is EOS stops right there.
    eos_engine = Engine(model, max_batch=1, max_seq_len=64, eos_ids=[full.token_ids[0]], tokenizer=tokenizer)
    ended = eos_engine.generate([Request(prompt, SamplingParams(temperature=0.0, max_new_tokens=40))])[0]
    assert (ended.token_ids, ended.finish_reason) == ([full.token_ids[0]], "stop")


def test_bad_requests(tiny):
    model, _ = tiny
    engine = Engine(model, max_batch=2, max_seq_len=32)
    with pytest.raises(RequestError, match="empty"):
        engine.submit(Request([], GREEDY))
    with pytest.raises(RequestError, match="exceeds the engine's context of 32"):
        engine.submit(Request([1] * 10, SamplingParams(max_new_tokens=23)))
    with pytest.raises(RequestError, match="tokenizer"):
        engine.submit(Request([1], SamplingParams(max_new_tokens=2, stop=("x",))))
    for bad in [dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2), dict(max_new_tokens=0)]:
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert engine.pending == 0


SHARDED = """
import json, sys
import jax
from jz3_jax.checkpoint import load_model
from jz3_jax.runtime.config import DEFAULT_RULES, MeshConfig
from jz3_jax.decoding import Engine, Request, SamplingParams
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules

data, fsdp, tensor = map(int, sys.argv[1:4])
mesh, rules = build_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor)), parse_rules(DEFAULT_RULES)
cfg = ModelConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
with jax.set_mesh(mesh):
    model, _ = load_model(cfg, mesh, rules, seed=3)
    result = {}
    for paged in (True, False):
        engine = Engine(model, max_batch=4, max_seq_len=48, paged=paged, page_size=16)
        requests = [Request([i + 1] * (3 + 5 * i), SamplingParams(temperature=float(i % 2), max_new_tokens=12 + i,
                                                                  seed=i)) for i in range(6)]
        result[f"tokens_{paged}"] = [r.token_ids for r in engine.generate(requests)]
        result[f"cache_spec_{paged}"] = str(engine._state.cache.k[0].sharding.spec)
print(json.dumps(result))
"""


@pytest.mark.slow
def test_sharded_engine_equals_unsharded(run_in_subprocess):
    from helpers import last_json_line

    single = last_json_line(run_in_subprocess(SHARDED, devices=1, args=["1", "1", "1"]))
    sharded = last_json_line(run_in_subprocess(SHARDED, devices=8, args=["2", "2", "2"]))
    assert sharded["tokens_True"] == single["tokens_True"] == sharded["tokens_False"] == single["tokens_False"]
    # contiguous: rows over data+fsdp, kv heads over tensor; paged: the pool's kv heads over tensor
    assert sharded["cache_spec_False"] == "P(('data', 'fsdp'), None, 'tensor')"
    assert sharded["cache_spec_True"] == "P('tensor',)"


def test_cancel_frees_the_row(tiny):
    model, _ = tiny
    engine = Engine(model, max_batch=1, max_seq_len=64)
    long = Request([1, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=50))
    short = Request([4, 5], SamplingParams(temperature=0.0, max_new_tokens=6))
    engine.submit(long)
    engine.submit(short)
    engine.step()  # `long` holds the only row
    assert engine.cancel(long) and not engine.cancel(long)
    finished = [e.finished for _ in range(10) for e in engine.step() if e.finished is not None]
    assert [f.token_ids for f in finished] == [engine.generate([Request([4, 5], short.params)])[0].token_ids]
    assert engine.pending == 0


# --- the decode step's attention layout (engine.decode_attention) ------------------------------------

def _decode_step_logits(model, layout: str, prompts: np.ndarray) -> tuple[np.ndarray, str]:
    """Logits of one cached decode step after `prompts` [b, n] with `layout`, and the program's text."""
    from flax import nnx

    graphdef, params = nnx.split(model.with_decode_attention(layout))
    b, n = prompts.shape

    def step(params, prompts):
        m = nnx.merge(graphdef, params)
        positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        _, cache = m(prompts[:, :-1], positions[:, :-1], jnp.ones((b, n - 1), jnp.int32), m.init_cache(b, 2 * n))
        logits, _ = m(prompts[:, -1:], positions[:, -1:], jnp.ones((b, 1), jnp.int32), cache)
        return logits[:, 0]

    lowered = jax.jit(step).lower(params, prompts)
    return np.asarray(lowered.compile()(params, prompts)), lowered.as_text()


@pytest.mark.parametrize("kv_heads,window", [(2, 8), (4, 0)])  # GQA with a sliding window; MHA (4 blocks)
def test_decode_attention_layouts_give_the_same_logits(kv_heads, window, mesh):
    cfg = ModelConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=kv_heads, sliding_window=window)
    model, _ = load_model(cfg, mesh, RULES, seed=5)
    prompts = jnp.asarray(np.random.default_rng(kv_heads).integers(0, 256, (3, 13)), jnp.int32)
    block, block_text = _decode_step_logits(model, "block_diagonal", prompts)
    grouped, grouped_text = _decode_step_logits(model, "grouped", prompts)
    assert block_text != grouped_text  # the layout really reached the model's decode step
    full = np.asarray(jax.jit(lambda m, x: m(x)[0][:, -1])(model, prompts))  # no cache: training attention
    np.testing.assert_allclose(block, full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grouped, full, rtol=1e-5, atol=1e-5)


def test_decode_attention_layouts_give_the_same_tokens(tiny):
    model, _ = tiny
    engines = {layout: Engine(model, max_batch=4, max_seq_len=80, steps_per_dispatch=4, decode_attention=layout,
                              paged=False) for layout in ("block_diagonal", "grouped")}  # layouts of the contiguous cache
    assert {name: e.decode_layout for name, e in engines.items()} == {"block_diagonal": "block_diagonal",
                                                                       "grouped": "grouped"}
    tokens = {name: [r.token_ids for r in e.generate(_mixed_requests(3))] for name, e in engines.items()}
    assert tokens["block_diagonal"] == tokens["grouped"]
    assert Engine(model, max_batch=1, max_seq_len=8).decode_layout == "grouped"  # auto on CPU
    with pytest.raises(ValueError, match="engine.decode_attention must be one of auto, block_diagonal, grouped"):
        Engine(model, max_batch=1, max_seq_len=8, decode_attention="dense")


def test_two_decode_layouts_run_side_by_side_in_threads(tiny):
    """The layout is an argument of each engine's model, not a swapped module global: two engines
    with different layouts, built over one model and run at the same time in two threads, each
    compile their own layout's decode step and give the same tokens."""
    import concurrent.futures
    import threading

    from jz3_jax.decoding import steps

    model, _ = tiny
    layouts = ("block_diagonal", "grouped")
    start = threading.Barrier(len(layouts))

    def build_and_run(layout: str):
        start.wait()  # both threads build, trace and decode concurrently
        engine = Engine(model, max_batch=4, max_seq_len=80, steps_per_dispatch=4, decode_attention=layout, paged=False)
        tokens = [r.token_ids for r in engine.generate(_mixed_requests(5))]
        keep = jnp.ones((engine.max_batch,), bool)
        with engine._on_mesh():
            text = steps.decode.lower(engine.decode_graphdef, engine.params, engine._state, keep, 2,
                                      engine.eos_ids, engine.max_top_k).as_text()
        return engine, tokens, text

    with concurrent.futures.ThreadPoolExecutor(len(layouts)) as pool:
        results = dict(zip(layouts, pool.map(build_and_run, layouts)))
    assert results["block_diagonal"][1] == results["grouped"][1]
    assert results["block_diagonal"][2] != results["grouped"][2]  # each ran its own decode program
    assert model.decode_attention == "block_diagonal"  # the caller's model is left as built
    assert {layout: r[0].decode_layout for layout, r in results.items()} == {l: l for l in layouts}
