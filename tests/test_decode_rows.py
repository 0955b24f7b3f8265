"""The rows a chip's KV-cache budget holds, contiguous vs paged (`train.decode_rows`), the cache
budget from two compiles, and `compile.mean_tokens` / `compile.max_tokens` checks."""

from __future__ import annotations

import dataclasses

import pytest

from jz3_jax.errors import ConfigError
from jz3_jax.train.decode_rows import cache_budget, decode_rows, round_rows


def test_rows_by_hand():
    # 10,000 bytes at 10 bytes per token: contiguous rows of 100 tokens -> 10 rows. Pages of 16 tokens
    # (160 bytes): 62 pages, one of them scratch; a mean row of 25 tokens holds ceil((25 + 8) / 16) = 3
    # pages (its last one half empty on average) -> 61 // 3 = 20 rows.
    rows = decode_rows(10_000, 10, max_tokens=100, mean_tokens=25, page_size=16)
    assert (rows.contiguous_rows, rows.pool_pages, rows.pages_per_row, rows.paged_rows) == (10, 62, 3, 20)
    assert rows.rows_ratio == 2.0 and rows.page_table_width == 7  # ceil(100 / 16)


def test_every_request_at_the_cap_gains_nothing_from_pages():
    rows = decode_rows(1 << 30, 1000, max_tokens=4096, mean_tokens=4096, page_size=128)
    assert rows.paged_rows <= rows.contiguous_rows  # the half-empty last page and the scratch page cost


def test_deepseek_7b_on_a_v5p_8_chip():
    """DeepSeekMath-7B's cache on one of 4 chips (8 of 32 kv heads): 30 layers x 2 x 8 x 128 x 2 bytes
    = 122,880 bytes per token; 80 GiB hold 170 rows of 4,096 positions, or 546 rows of 1,200 tokens
    on average in pages of 128 (10 pages a row)."""
    rows = decode_rows(80 << 30, 122_880, max_tokens=4096, mean_tokens=1200, page_size=128)
    assert rows.contiguous_rows == 170 and rows.pages_per_row == 10 and rows.paged_rows == 546
    assert rows.rows_ratio > 3


def test_separate_paged_budget():
    rows = decode_rows(10_000, 10, 100, 25, 16, paged_budget_bytes=5_000)
    assert rows.contiguous_rows == 10 and rows.pool_pages == 31 and rows.paged_rows == 10


def test_bad_lengths():
    with pytest.raises(ValueError):
        decode_rows(1000, 10, max_tokens=100, mean_tokens=200, page_size=16)
    with pytest.raises(ValueError):
        decode_rows(1000, 10, max_tokens=100, mean_tokens=0, page_size=16)


def test_cache_budget_from_two_compiles():
    # total = 5 GiB fixed + 1 byte per cache byte: 95 - 5 = 90 GiB of cache fit in 95 GiB
    gib = 1 << 30
    budget, fixed, per_byte = cache_budget((10 * gib, 15 * gib), (20 * gib, 25 * gib), 95 * gib)
    assert (budget, fixed, per_byte) == (90 * gib, 5 * gib, 1.0)
    # a program that copies its cache needs 2 bytes per cache byte: half the cache fits
    budget, fixed, per_byte = cache_budget((10 * gib, 25 * gib), (20 * gib, 45 * gib), 95 * gib)
    assert (budget, fixed, per_byte) == (45 * gib, 5 * gib, 2.0)
    # never less than the cache itself, whatever the noise in the compiler's totals
    assert cache_budget((10, 100), (20, 101), 1000)[2] == 1.0
    with pytest.raises(ValueError):
        cache_budget((20, 1), (10, 2), 100)


def test_round_rows():
    assert round_rows(37, 4) == 36 and round_rows(3, 4) == 4 and round_rows(37, 1) == 37


def test_token_limits_default_and_checks():
    from jz3_jax.config import Config
    from jz3_jax.config.specs import build_spec
    from jz3_jax.train.compile_decode import token_limits
    from jz3_jax.train.spec import CompileSpec

    cfg = Config()
    cfg.engine.max_seq_len = 512
    assert token_limits(build_spec(CompileSpec, cfg)) == (512, 512)
    cfg.compile.max_tokens, cfg.compile.mean_tokens = 4096, 1200
    assert token_limits(build_spec(CompileSpec, cfg)) == (4096, 1200)
    for mean in (5000, -1):
        bad = dataclasses.replace(cfg.compile, mean_tokens=mean)
        cfg2 = Config()
        cfg2.compile = bad
        with pytest.raises(ConfigError, match="compile.mean_tokens"):
            token_limits(build_spec(CompileSpec, cfg2))
