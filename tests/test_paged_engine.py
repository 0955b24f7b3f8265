"""The paged KV cache: the page pool and prefix cache on their own, attention through page tables
against the contiguous cache's, and the paged engine (prefix sharing, preemption) against the
contiguous engine token for token."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jz3_jax.checkpoint import load_model
from jz3_jax.decoding import Engine, Request, SamplingParams
from jz3_jax.decoding.compiles import count_compiles
from jz3_jax.decoding.config import EngineConfig
from jz3_jax.decoding.paging import PagePool, page_keys, pool_pages
from jz3_jax.model.attention import attention_mask, dot_product_attention, grouped_decode_attention
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.paged_attention import (gather_decode_attention, paged_decode_attention, paged_prefill_attention,
                                          write_pages)
from jz3_jax.runtime.config import DEFAULT_RULES, MeshConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules

RULES = parse_rules(DEFAULT_RULES)


# --- the pool -----------------------------------------------------------------------------------------

def test_page_keys_name_whole_prefixes():
    a = list(range(40))
    b = a[:16] + [99] + a[17:]  # differs in page 1 (of 8 tokens): pages 0 and 1 equal... page 2 on differ
    ka, kb = page_keys(a, 8, 5), page_keys(b, 8, 5)
    assert ka[:2] == kb[:2] and all(x != y for x, y in zip(ka[2:], kb[2:]))
    assert page_keys(a[:24], 8, 3) == ka[:3]  # a key depends only on the tokens up to its page's end
    assert len(set(page_keys([7] * 32, 8, 4))) == 4  # equal pages at different depths: different keys


def test_pool_takes_frees_and_evicts_least_recently_used():
    pool = PagePool(num_pages=5, page_size=4)  # 4 usable pages (page 0 is scratch)
    first = pool.take(2)
    assert 0 not in first and pool.available() == 2 and pool.in_use() == 2
    keys_a, keys_b = page_keys(list(range(8)), 4, 2), page_keys(list(range(100, 108)), 4, 2)
    pool.publish(keys_a, first)
    assert pool.lookup(keys_a) == first and pool.lookup(keys_b) == []
    second = pool.take(2)
    pool.publish(keys_b, second)
    pool.release(first[::-1])  # cached pages no row holds: idle, still found, still available
    assert pool.available() == 2 and pool.lookup(keys_a) == first
    pool.hold(pool.lookup(keys_a)[:1])  # a new row shares page a0
    assert pool.available() == 1
    pool.release(second[::-1])
    assert pool.available() == 3
    # The pool needs pages: the free ones first (none), then idle ones, least recently released first:
    # a1 (released before b's pages), then b1, b0 (a row's deeper pages go before its root).
    assert pool.take(2) == [first[1], second[1]]
    assert pool.lookup(keys_a) == first[:1] and pool.lookup(keys_b) == second[:1]
    with pytest.raises(RuntimeError):
        pool.take(2)


def test_pool_without_prefix_cache_shares_nothing():
    pool = PagePool(num_pages=4, page_size=4, prefix_cache=False)
    pages = pool.take(2)
    keys = page_keys(list(range(8)), 4, 2)
    pool.publish(keys, pages)
    pool.release(pages)
    assert pool.lookup(keys) == [] and pool.available() == 3


def test_pool_pages_sizing():
    model = ModelConfig(num_layers=2, num_kv_heads=2, hidden_size=64, num_heads=4)  # head_dim 16
    cfg = EngineConfig(max_batch=4, max_seq_len=100, page_size=32)
    assert pool_pages(cfg, model, 4) == 4 * 4 + 1  # ceil(100 / 32) pages per row at full length, + scratch
    assert pool_pages(dataclasses.replace(cfg, num_pages=9), model, 4) == 9
    page_bytes = 2 * 2 * 2 * 32 * 16 * 4  # k and v, layers, kv heads, page, head_dim, float32
    assert pool_pages(dataclasses.replace(cfg, kv_cache_gib=page_bytes * 10.5 / 2**30), model, 4) == 10


# --- attention through page tables ------------------------------------------------------------------

def _scattered(rng, rows: int, length: int, kv_heads: int, d: int, page_size: int, num_pages: int):
    """Random contiguous keys/values and the same tokens written into a pool at shuffled pages."""
    k, v = (rng.standard_normal((rows, length, kv_heads, d)).astype(np.float32) for _ in range(2))
    per_row = length // page_size
    pages = rng.permutation(np.arange(1, num_pages))[: rows * per_row].reshape(rows, per_row).astype(np.int32)
    pools = (jnp.zeros((kv_heads, num_pages, page_size, d)),) * 2
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length))
    k_pages, v_pages = write_pages(*pools, jnp.asarray(k), jnp.asarray(v), positions, jnp.ones((rows, length), jnp.int32),
                                   jnp.asarray(pages))
    return k, v, k_pages, v_pages, pages


@pytest.mark.parametrize("chunk_pages", [None, 1, 3])
@pytest.mark.parametrize("window", [0, 5])
def test_paged_decode_attention_equals_the_contiguous_cache(window, chunk_pages):
    rng = np.random.default_rng(0)
    rows, length, kv_heads, heads, d, page_size = 3, 32, 2, 6, 16, 8
    k, v, k_pages, v_pages, table = _scattered(rng, rows, length, kv_heads, d, page_size, num_pages=20)
    q = rng.standard_normal((rows, 1, heads, d)).astype(np.float32)
    lengths = np.array([1, 17, 32], np.int32)
    positions = jnp.asarray(lengths - 1)[:, None]
    mask = attention_mask(jnp.ones((rows, 1), jnp.int32), jnp.asarray(np.arange(length)[None] < lengths[:, None]),
                          positions, jnp.broadcast_to(jnp.arange(length), (rows, length)), window)
    expected = grouped_decode_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
    scaled = jnp.asarray(q[:, 0]) * d**-0.5
    if chunk_pages is None:  # the backend's chunk (here all 4 pages of a row in one step)
        got = paged_decode_attention(scaled, k_pages, v_pages, jnp.asarray(lengths), jnp.asarray(table),
                                     sliding_window=window)
    else:  # several steps of the online softmax, the last one partly past the table (3 does not divide 4)
        got = gather_decode_attention(scaled, k_pages, v_pages, jnp.asarray(lengths), jnp.asarray(table), window,
                                      chunk_pages)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected).reshape(rows, heads, d), atol=1e-5)


def test_paged_decode_attention_of_an_empty_row_is_zero_not_nan():
    """An inactive row (length 0) reads nothing: zeros, not NaN, even when the keys of the pages it
    names are NaN (its output feeds its own writes to the scratch page, which every row's masked
    columns read)."""
    rng = np.random.default_rng(0)
    k, v, k_pages, v_pages, table = _scattered(rng, 2, 16, 2, 8, 4, num_pages=12)
    k_pages = k_pages.at[:, 0].set(jnp.nan)
    q = jnp.asarray(rng.standard_normal((2, 4, 8)), jnp.float32)
    table = np.concatenate([table, np.zeros((2, 2), np.int32)], axis=1)  # unused columns: the scratch page
    out = gather_decode_attention(q, k_pages, v_pages, jnp.asarray([0, 16], jnp.int32), jnp.asarray(table),
                                  chunk_pages=2)
    assert np.all(np.asarray(out)[0] == 0) and np.all(np.isfinite(np.asarray(out)))


def test_paged_prefill_attention_over_a_cached_prefix_equals_full_attention():
    rng = np.random.default_rng(1)
    rows, length, kv_heads, heads, d, page_size, start = 2, 24, 2, 4, 8, 8, 16
    k, v, k_pages, v_pages, table = _scattered(rng, rows, length, kv_heads, d, page_size, num_pages=10)
    q = rng.standard_normal((rows, length, heads, d)).astype(np.float32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
    ones = jnp.ones((rows, length), jnp.int32)
    full = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                 attention_mask(ones, ones, jnp.asarray(positions), jnp.asarray(positions), 0))
    suffix = paged_prefill_attention(jnp.asarray(q[:, start:]), k_pages, v_pages, jnp.asarray(positions[:, start:]),
                                     jnp.full((rows,), length, jnp.int32), jnp.asarray(table))
    np.testing.assert_allclose(np.asarray(suffix), np.asarray(full)[:, :, :, start:], atol=1e-5)


# --- the engine ------------------------------------------------------------------------------------------

def _tiny(scan_layers: bool):
    cfg = ModelConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, pad_token_id=256, bos_token_id=257, eos_token_id=258, scan_layers=scan_layers)
    return load_model(cfg, build_mesh(MeshConfig()), RULES, seed=3)[0]


@pytest.fixture(scope="module")
def model():
    return _tiny(scan_layers=False)


def _template_requests() -> list[Request]:
    """Prompts sharing a 40-token template, mixed lengths, greedy and seeded-sampled."""
    rng = np.random.default_rng(0)
    template = rng.integers(0, 256, 40).tolist()
    requests = []
    for i in range(8):
        prompt = template + rng.integers(0, 256, int(rng.integers(1, 30))).tolist()
        params = SamplingParams(temperature=1.0 if i % 2 else 0.0, top_k=20 if i % 4 == 1 else 0,
                                max_new_tokens=int(rng.integers(4, 30)), seed=i)
        requests.append(Request(prompt, params, id=i))
    return requests


def _run(model, **engine_args):
    engine_args = {"page_size": 8, **engine_args}
    engine = Engine(model, max_batch=4, max_seq_len=128, prompt_bucket=32, steps_per_dispatch=4, **engine_args)
    events = {}
    requests = _template_requests()
    for request in requests:
        request.on_event = lambda event: events.setdefault(event.request.id, []).extend(event.new_token_ids)
    results = engine.generate(requests)
    streamed = [events[r.id] for r in results]
    return [r.token_ids for r in results], streamed, engine.stats()


@pytest.fixture(scope="module")
def contiguous(model):
    return _run(model, paged=False)[0]


@pytest.mark.parametrize("args", [dict(), dict(prefix_cache=False), dict(num_pages=16),
                                  dict(num_pages=16, prefix_cache=False)],
                         ids=["prefix", "no_prefix", "small_pool", "small_pool_no_prefix"])
def test_paged_engine_equals_contiguous(model, contiguous, args):
    tokens, streamed, stats = _run(model, **args)
    assert tokens == contiguous  # greedy and seeded-sampled rows alike
    assert streamed == tokens  # each token streamed once, in order, preempted or not
    assert stats["prefill_tokens_total"] >= sum(len(r.prompt_ids) for r in _template_requests())
    assert stats["pages_in_use"] == 0 and stats["rows_running_max"] <= 4
    if "num_pages" in args:  # 15 usable pages of 8 tokens, 4 rows of up to 91: rows are preempted and recomputed
        assert stats["preemptions"] > 0
    if args.get("prefix_cache", True):  # the 40-token template: 5 full pages shared
        assert stats["prefix_hit_tokens"] > 0
        assert stats["prefill_tokens_computed"] < stats["prefill_tokens_total"]
    else:
        assert stats["prefix_hit_tokens"] == 0


@pytest.mark.parametrize("paged", [True, False])
def test_rows_full_counts_only_dispatches_with_requests_waiting(model, paged):
    """3 requests of 1 + 2 x 4 tokens on 2 rows: A and B decode 2 dispatches while C waits (full),
    then C alone decodes 2: rows 2, 2, 1, 1."""
    engine = Engine(model, max_batch=2, max_seq_len=64, prompt_bucket=16, steps_per_dispatch=4, paged=paged,
                    page_size=8)
    engine.generate([Request([1 + i, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=9)) for i in range(3)])
    stats = engine.stats()
    assert stats["dispatches_full"] == 2 and stats["rows_full_mean"] == 2.0
    assert stats["rows_running_mean"] == 1.5 and stats["rows_running_max"] == 2


def test_scanned_layers_paged_equals_contiguous():
    """Scanned layers share one pool carried through the layer scan (each layer's pages at its own
    offset): the layout the TPU decode step runs; the same tokens as the contiguous cache."""
    scanned = _tiny(scan_layers=True)
    tokens, _, stats = _run(scanned, num_pages=14)
    assert tokens == _run(scanned, paged=False)[0]
    assert stats["preemptions"] > 0 and stats["prefix_hit_tokens"] > 0


def test_no_request_compiles_after_warm_up(model):
    engine = Engine(model, max_batch=4, max_seq_len=128, prompt_bucket=32, steps_per_dispatch=4, page_size=8,
                    num_pages=14, mesh=build_mesh(MeshConfig()))  # (as `load_engine` builds it: on the model's mesh)
    assert engine.warm_up() > 0
    with count_compiles() as log:
        engine.generate(_template_requests())
    assert engine.stats()["preemptions"] > 0 and engine.stats()["prefix_hit_tokens"] > 0
    assert log.names == []


def test_a_request_beyond_the_pool_is_refused(model):
    from jz3_jax.decoding import RequestError

    engine = Engine(model, max_batch=2, max_seq_len=128, prompt_bucket=32, page_size=16, num_pages=3)  # 32 tokens
    with pytest.raises(RequestError, match="pages"):
        engine.submit(Request([1] * 20, SamplingParams(max_new_tokens=14)))
    done = engine.generate([Request([1] * 20, SamplingParams(max_new_tokens=13))])  # the last token is never cached
    assert len(done[0].token_ids) == 13


def test_rows_admitted_together_share_a_prefix_in_prefill_rounds():
    from jz3_jax.decoding.paged_rows import PagedRows

    rows = PagedRows(rows=3, max_seq_len=64, page_size=4, num_pages=40, prefix_cache=True)
    template = list(range(12))  # 3 full pages
    rows.begin_wave()
    assert rows.admit(0, template + [50, 51], upto=16, reserve=0) == (0, 0)  # computes the template
    assert rows.admit(1, template + [60], upto=16, reserve=0) == (12, 1)  # reads it: prefilled after row 0
    assert rows.admit(2, [99] + template, upto=16, reserve=0) == (0, 0)  # another prefix entirely
    assert list(rows.table[1, :3]) == list(rows.table[0, :3]) and rows.table[1, 3] not in rows.table[0]
    assert rows.prefix_hit_tokens == 12 and rows.prefill_tokens_computed == 14 + 1 + 13
    rows.free(0)
    rows.free(1)
    rows.begin_wave()
    assert rows.admit(0, template + [7, 7, 7, 7, 1], upto=20, reserve=0) == (12, 0)  # cached before this wave
    assert rows.admit(1, [5] * 30, upto=40, reserve=40) is None  # the reserve for other rows does not fit
