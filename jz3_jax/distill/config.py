"""The `distill` and `teacher` sections (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses

from jz3_jax.prompts.config import PromptPlanConfig


@dataclasses.dataclass
class TeacherConfig:
    """The teacher: any OpenAI-compatible chat endpoint.

    The API key is read from the environment variable named by `api_key_env` (never from the
    config). `timeout_s` bounds one HTTP attempt; `max_retries` retries follow a 429, a 5xx, a
    timeout, a connection error or a malformed body, after an exponential back-off from
    `backoff_s` (doubling, capped at `max_backoff_s`, with full jitter) or the server's
    `Retry-After`, whichever is longer. Prices (per million tokens) give `cost_estimate`; answers
    from the Batch API (`distill.mode=batch`) cost `batch_discount` (0.5) of them. In batch mode
    `max_retries` also bounds the extra batch rounds of a failed, expired or cancelled request.
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 2500
    stop: list[str] = dataclasses.field(default_factory=list)
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0
    batch_discount: float = 0.5  # the Batch API's price as a fraction of the listed prices


@dataclasses.dataclass
class DistillConfig(PromptPlanConfig):
    """`distill` stage: snippets x education levels x kinds -> teacher requests -> the KD dataset.

    The prompt plan's keys (`snippets`, `levels`, `level_policy`, `kinds`, `source_levels`,
    `source_kinds`) come from `PromptPlanConfig`; `snippets` "" = RUN_DIR/select/selected.jsonl when
    it exists, else RUN_DIR/corpus/snippets.jsonl. The first `num_snippets` are used (0 = all). `concurrency` requests in flight, at most `requests_per_minute` started per
    minute (0 = no limit). Budgets (0 = none), never exceeded, in-flight requests included:
    `max_calls` HTTP attempts, `max_tokens` prompt + completion tokens (an attempt reserves the most
    it could cost). `cache_dir` ("" = RUN_DIR/distill/cache) holds every paid answer by request hash.
    Validation: `min_chars` / `max_chars` bound the answer's length; `require_answer` asks for a
    `\\boxed{}` final answer. `include`: earlier kd.jsonl files merged into this one (no duplicates).
    `mode`: `sync` (one HTTP request per prompt) or `batch` (the provider's Batch API, see
    `batch.py`): input files of at most `batch_max_requests` lines and `batch_max_bytes` bytes,
    polled every `batch_poll_s` seconds (growing while nothing changes); `batch_fallback`: what
    happens to a request that failed in a batch: `batch` (a later batch) or `sync` (sent at once).
    In batch mode the budgets count a request when it is submitted, reserving its full bound.
    """

    num_snippets: int = 0
    concurrency: int = 4
    requests_per_minute: float = 0.0
    max_calls: int = 0
    max_tokens: int = 0
    cache_dir: str = ""
    min_chars: int = 40
    max_chars: int = 20000
    require_answer: bool = True
    include: list[str] = dataclasses.field(default_factory=list)
    mode: str = "sync"
    batch_max_requests: int = 50_000
    batch_max_bytes: int = 190_000_000
    batch_poll_s: float = 30.0
    batch_fallback: str = "batch"
