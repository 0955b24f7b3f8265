"""`bench.kind=synthesis`: the synthesis workload through the paged and the contiguous engine.

The prompts are what `synthesize` renders: snippets of the shipped corpus (`jz3_jax/pipeline/data/
corpus.jsonl`; past its 24 texts, pairs of them, so no two prompts are the same) in the prompt
library's template for one education level (`bench.level`), so every prompt starts with the same
template. Each request generates exactly its own `max_new_tokens` (greedy, no EOS), drawn from an
exponential distribution with mean `sampling.max_new_tokens / bench.length_spread`, clipped to [1,
`sampling.max_new_tokens`]: the cap is `length_spread` times the mean, like a synthesizer whose
outputs are far shorter on average than their cap.

Both engines get the same KV-cache bytes: the contiguous one `bench.batch` rows of max prompt + cap
positions; the paged one a pool of those bytes (`engine.page_size` tokens per page,
`engine.prefix_cache`, `engine.paged_kernel`) and up to `length_spread x bench.batch` rows (a pool
that holds `batch` rows at the cap holds about that many at the mean), so its rows are bounded by
memory, not by the longest request (the paged decode step computes only the running rows, padded
to a row bucket). Each engine compiles everything first
(`Engine.warm_up`), then runs the whole workload once, timed end to end (prefill + decode). The JSON
line: tokens/s of both and their ratio; the rows each ran per decode dispatch while requests were
waiting (the engine full: rows bounded by its memory or row cap, as through a bulk job of millions
of requests) and their ratio (`rows_ratio`), and the same over every dispatch (`rows_ratio_all`:
diluted by the drain at the end, where the rows are bounded by the requests left);
prompt tokens prefilled vs computed (the prefix cache's saving), preemptions, and `identical`: whether
both engines' outputs are the same token for token.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import jax
import numpy as np

from jz3_jax.bench.harness import report
from jz3_jax.errors import ConfigError
from jz3_jax.stages import StageContext

if TYPE_CHECKING:
    from jz3_jax.bench.spec import BenchSpec


def corpus_snippets(count: int) -> list[str]:
    """`count` distinct snippets from the shipped corpus: its texts, then pairs of them."""
    from jz3_jax.pipeline.assets import data_path

    with open(data_path("corpus.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    n = len(texts)
    if count > n * n:
        raise ConfigError(f"bench.requests={count}: the shipped corpus gives at most {n * n} distinct snippets")
    out = []
    for i in range(count):
        rnd, first = divmod(i, n)
        out.append(texts[first] if rnd == 0 else texts[first] + "\n\n" + texts[(first + rnd) % n])
    return out


def new_token_counts(count: int, cap: int, spread: float, seed: int) -> list[int]:
    """Per-request max_new_tokens: exponential with mean cap / spread, clipped to [1, cap]."""
    draws = np.random.default_rng(seed).exponential(cap / spread, count)
    return [int(x) for x in np.clip(np.rint(draws), 1, cap)]


def workload(tokenizer, spec: BenchSpec) -> tuple[list[list[int]], list[int]]:
    """(prompt token ids, max_new_tokens) of every request."""
    from jz3_jax.prompts.library import render

    b = spec.bench
    prompts = [tokenizer.encode(render(text, b.level, "cot"), add_bos=tokenizer.adds_bos)
               for text in corpus_snippets(b.requests)]
    return prompts, new_token_counts(b.requests, spec.sampling.max_new_tokens, b.length_spread, spec.seed)


def _run(engine, prompts: list[list[int]], max_new: list[int], logger, name: str) -> tuple[list, float, dict]:
    """Warm the engine up, run every request once; (token ids per request, seconds, engine stats)."""
    from jz3_jax.decoding.engine import Request
    from jz3_jax.decoding.sampling import SamplingParams

    start = time.perf_counter()
    compiled = engine.warm_up()
    logger.info("%s engine: %d programs compiled in %.1f s", name, compiled, time.perf_counter() - start)
    requests = [Request(p, SamplingParams(temperature=0.0, max_new_tokens=n)) for p, n in zip(prompts, max_new)]
    start = time.perf_counter()
    results = engine.generate(requests)
    seconds = time.perf_counter() - start
    tokens = [list(r.token_ids) for r in results]
    assert [len(t) for t in tokens] == max_new, f"the {name} engine stopped a request early"
    stats = engine.stats()
    logger.info("%s engine: %d tokens in %.2f s (%.1f tokens/s), stats %s", name, sum(max_new), seconds,
                sum(max_new) / seconds, stats)
    return tokens, seconds, stats


def run(spec: BenchSpec, ctx: StageContext) -> dict:
    from jz3_jax.checkpoint import prepare_model
    from jz3_jax.decoding.engine import Engine
    from jz3_jax.decoding.factory import engine_mesh
    from jz3_jax.decoding.paging import default_pages

    b, e = spec.bench, spec.engine
    cap = spec.sampling.max_new_tokens
    if b.requests < 1 or cap < 1 or b.batch < 1 or b.length_spread < 1:
        raise ConfigError("bench.kind=synthesis needs bench.requests, sampling.max_new_tokens, bench.batch >= 1 and "
                          f"bench.length_spread >= 1; got {b.requests}, {cap}, {b.batch}, {b.length_spread}")
    from jz3_jax.prompts.library import level_names

    if b.level not in level_names():
        raise ConfigError(f"bench.level must be one of {', '.join(level_names())}; got {b.level!r}")
    mesh, rules = engine_mesh(e)
    prepared = prepare_model(spec.model, ctx.logger, needed_by="bench.kind=synthesis")
    prompts, max_new = workload(prepared.tokenizer, spec)
    page = e.page_size  # page size, prefix cache and kernel as configured; rows and pool set here
    options = dict(prefix_cache=e.prefix_cache, paged_kernel=e.paged_kernel)
    length = -(-(max(map(len, prompts)) + cap) // page) * page  # whole pages: the same bytes both ways
    ctx.logger.info("synthesis workload: %d prompts (level %s) of %.0f tokens on average (%d-%d), %.1f new tokens "
                    "on average (cap %d); cache %d rows x %d positions", len(prompts), b.level,
                    np.mean([len(p) for p in prompts]), min(map(len, prompts)), max(map(len, prompts)),
                    np.mean(max_new), cap, b.batch, length)
    common = dict(max_seq_len=length, eos_ids=(), steps_per_dispatch=e.steps_per_dispatch,
                  prompt_bucket=e.prompt_bucket, mesh=mesh, max_top_k=e.max_top_k,
                  decode_attention=e.decode_attention)
    pool = default_pages(b.batch, length, page)
    with jax.set_mesh(mesh):
        model = prepared.load(mesh, rules, spec.seed)
        paged = Engine(model, max_batch=round(b.length_spread * b.batch), paged=True, page_size=page, num_pages=pool,
                       **options, **common)
        kernel = paged.paged_kernel
        paged_tokens, paged_s, paged_stats = _run(paged, prompts, max_new, ctx.logger, "paged")
        del paged  # its pool is freed before the contiguous cache of the same bytes is allocated
        contiguous = Engine(model, max_batch=b.batch, paged=False, **common)
        contiguous_tokens, contiguous_s, contiguous_stats = _run(contiguous, prompts, max_new, ctx.logger,
                                                                 "contiguous")
    generated = sum(max_new)
    total = paged_stats["prefill_tokens_total"]
    computed = paged_stats["prefill_tokens_computed"]
    rows_p, rows_c = paged_stats["rows_full_mean"], contiguous_stats["rows_full_mean"]
    all_p, all_c = paged_stats["rows_running_mean"], contiguous_stats["rows_running_mean"]
    differ = [i for i, (x, y) in enumerate(zip(paged_tokens, contiguous_tokens)) if x != y]
    if differ:
        ctx.logger.warning("%d of %d requests differ between the engines (first: %d)", len(differ), len(prompts),
                           differ[0])
    return report(
        "synthesis", "tokens/s", generated / paged_s, generated / contiguous_s,
        tokens_per_s_paged=round(generated / paged_s, 2), tokens_per_s_contiguous=round(generated / contiguous_s, 2),
        mean_rows_paged=round(rows_p, 2), mean_rows_contiguous=round(rows_c, 2),
        rows_ratio=round(rows_p / rows_c, 3) if rows_c else None,
        mean_rows_all_paged=round(all_p, 2), mean_rows_all_contiguous=round(all_c, 2),
        rows_ratio_all=round(all_p / all_c, 3) if all_c else None,
        dispatches_full_paged=paged_stats["dispatches_full"],
        dispatches_full_contiguous=contiguous_stats["dispatches_full"],
        max_rows_paged=paged_stats["rows_running_max"], max_rows_contiguous=contiguous_stats["rows_running_max"],
        prefill_tokens_computed=computed, prefill_tokens_total=total,
        prefix_saved_fraction=round(1 - computed / total, 3) if total else 0.0,
        preemptions=paged_stats["preemptions"], identical=not differ, requests=len(prompts),
        generated_tokens=generated, mean_new_tokens=round(float(np.mean(max_new)), 1), new_tokens_cap=cap,
        mean_prompt_tokens=round(float(np.mean([len(p) for p in prompts])), 1), level=b.level,
        contiguous_rows=b.batch, positions_per_row=length, page_size=page, pool_pages=pool, paged_kernel=kernel,
        seconds_paged=round(paged_s, 2), seconds_contiguous=round(contiguous_s, 2))
