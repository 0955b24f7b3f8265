"""Top-k / top-p from `jax.lax.top_k` candidates (`engine.max_top_k`) against the sort-based filter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jz3_jax.checkpoint import load_model
from jz3_jax.decoding import Engine, Request, RequestError, SamplingParams
from jz3_jax.decoding import sampling
from jz3_jax.decoding.sampling import _filter_from_candidates, _filter_top_k_top_p, filter_top_k_top_p
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.config import DEFAULT_RULES, MeshConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules

CAP = 64
# jitted once per shape (eager op-by-op dispatch of these filters is slow on CPU)
REFERENCE = jax.jit(_filter_top_k_top_p)
CANDIDATES = jax.jit(_filter_from_candidates, static_argnums=3)
FILTER = jax.jit(filter_top_k_top_p, static_argnums=3)


def _case(rng, rows: int, vocab: int, scale: float, ties: bool = False):
    logits = rng.normal(size=(rows, vocab)) * scale
    if ties:  # many equal logits, also at the k-th place and at the nucleus' edge
        logits = np.round(logits)
    top_k = rng.choice([0, 0, 1, 2, 5, 50, CAP, vocab, vocab + 7], rows)
    top_p = rng.choice([1.0, 1.0, 0.95, 0.9, 0.5, 1e-6], rows)
    return jnp.asarray(logits, jnp.float32), jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32)


@pytest.mark.parametrize("vocab", [260, 4096, 49152])
@pytest.mark.parametrize("scale", [2.0, 8.0, 30.0])
@pytest.mark.parametrize("ties", [False, True])
def test_candidates_filter_equals_the_sort_where_the_nucleus_fits(vocab, scale, ties):
    rng = np.random.default_rng(int(vocab * scale) + ties)
    logits, top_k, top_p = _case(rng, 16, vocab, scale, ties)
    reference = np.asarray(REFERENCE(logits, top_k, top_p))
    fast, fits = (np.asarray(x) for x in CANDIDATES(logits, top_k, top_p, CAP))
    assert fits.sum() >= 8  # most rows: top-k within the cap, no nucleus, or a nucleus within the cap
    np.testing.assert_array_equal(fast[fits], reference[fits])  # same kept set and the very same values
    np.testing.assert_array_equal(np.asarray(FILTER(logits, top_k, top_p, CAP)), reference)


def test_a_nucleus_larger_than_the_cap_is_still_exact():
    """A flat distribution with top_p 0.9 keeps thousands of tokens: the step falls back to the sort."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 49152)) * 0.5
    top_k, top_p = jnp.asarray([0, 40, 0, 0]), jnp.asarray([1.0, 1.0, 0.9, 1.0])
    fits = np.asarray(CANDIDATES(logits, top_k, top_p, CAP)[1])
    assert not fits[2] and fits[[0, 1, 3]].all()
    filtered = np.asarray(FILTER(logits, top_k, top_p, CAP))
    np.testing.assert_array_equal(filtered, np.asarray(REFERENCE(logits, top_k, top_p)))
    assert np.isfinite(filtered[2]).sum() > 10 * CAP
    assert np.isfinite(filtered[[0, 3]]).all() and np.isfinite(filtered[1]).sum() == 40


def test_sampled_tokens_equal_the_sort_based_sampler():
    """Fixed keys: `sample_tokens` with the top-k candidates draws the sort-based sampler's tokens."""
    rng = np.random.default_rng(1)
    logits, top_k, top_p = _case(rng, 32, 4096, 6.0)
    temperature = jnp.asarray(rng.choice([0.0, 0.1, 0.7, 1.0], 32), jnp.float32)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(32))
    counts = jnp.asarray(rng.integers(0, 100, 32), jnp.int32)

    def reference(logits):
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        scaled = _filter_top_k_top_p(scaled, top_k, top_p)
        drawn = jax.vmap(jax.random.categorical)(jax.vmap(jax.random.fold_in)(keys, counts), scaled)
        return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1))

    ours = jax.jit(sampling.sample_tokens, static_argnums=6)(logits, temperature, top_k, top_p, keys, counts, CAP)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax.jit(reference)(logits)))


@pytest.fixture(scope="module")
def tiny():
    mesh = build_mesh(MeshConfig())
    cfg = ModelConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, pad_token_id=256, bos_token_id=257, eos_token_id=258)
    model, _ = load_model(cfg, mesh, parse_rules(DEFAULT_RULES), seed=3)
    return model


def _requests() -> list[Request]:
    """The sampled cases of the engine tests: top-k 50, top-p 0.9, both, tiny nucleus, top-k 1, none."""
    rng = np.random.default_rng(0)
    settings = [dict(top_k=50), dict(top_p=0.9), dict(top_k=50, top_p=0.9), dict(top_p=1e-6), dict(top_k=1),
                dict(), dict(top_k=CAP, top_p=0.95), dict(top_k=2**40)]
    return [Request(rng.integers(0, 256, 3 + 5 * i).tolist(),
                    SamplingParams(temperature=1.0, max_new_tokens=20, seed=100 + i, **s), id=i)
            for i, s in enumerate(settings)]


def test_engine_tokens_equal_the_sort_based_filter(tiny, monkeypatch):
    ours = [r.token_ids for r in Engine(tiny, max_batch=4, max_seq_len=64).generate(_requests())]
    monkeypatch.setattr(sampling, "filter_top_k_top_p", lambda logits, top_k, top_p, cap:
                        _filter_top_k_top_p(logits, top_k, top_p))
    jax.clear_caches()  # the decode program must be traced again with the sort-based filter
    try:
        sorted_ = [r.token_ids for r in Engine(tiny, max_batch=4, max_seq_len=64).generate(_requests())]
    finally:
        jax.clear_caches()
    assert ours == sorted_
    assert len({tuple(t) for t in ours}) == len(ours)  # the cases differ: the filters did something


def test_top_k_above_max_top_k_is_a_request_error(tiny):
    engine = Engine(tiny, max_batch=1, max_seq_len=32, max_top_k=8)
    assert engine.max_top_k == 8
    with pytest.raises(RequestError, match=r"top_k=9 exceeds this engine's limit of 8 \(engine.max_top_k\)"):
        engine.submit(Request([1, 2], SamplingParams(top_k=9, max_new_tokens=2)))
    for fine in (8, 0, 260, 10**6):  # at the cap, off, or the whole vocabulary (= off)
        engine.validate(Request([1, 2], SamplingParams(top_k=fine, max_new_tokens=2)))
    assert Engine(tiny, max_batch=1, max_seq_len=32, max_top_k=10**6).max_top_k == 260  # the vocabulary: exact


def test_synthesize_refuses_a_sampling_top_k_above_the_cap(tmp_path, run_launch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n')
    result = run_launch("synthesize", "--config", "configs/tiny.py", "--run-dir", tmp_path / "run",
                        f"synthesize.prompts={prompts}", "sampling.top_k=100", "engine.max_top_k=64")
    assert result.returncode == 2, result.stderr
    assert "top_k=100 exceeds this engine's limit of 64 (engine.max_top_k)" in result.stderr
