"""The `eval` and `grade` sections (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EvalConfig:
    """`eval` stage: generate answers on math benchmarks (CoT or tool) and grade them.

    `datasets`: names from `jz3_jax.eval.datasets.DATASETS` (jz3_mini ships with the package; the
    others are read from `data_dir`, e.g. ../shared/data/eval). `setting`: cot (`## Solution`) or
    tool (`## Code Solution`: the model's Python runs in the sandbox, its output is appended, up to
    `max_tool_calls` runs). `limit`: the first N problems of each dataset (0 = all). `shots`: number
    of demonstrations (-1 = the paper's default per dataset: 5 for aqua, sat_math, mmlu_stem, else 0).
    `chat_template`: wrap each prompt as a user message of the tokenizer's chat template.
    Greedy decoding, `max_new_tokens` per generation call. Tool runs: `tool_timeout_s`,
    `tool_memory_mb`, output cut to `tool_output_chars`, `sandbox_workers` in parallel,
    `isolation` (auto, namespaces, rlimits); `allow_unsandboxed` must be true for model code to
    run with rlimits, which is not a sandbox (also when auto finds no user namespaces).
    Grading: `grade_policy` (strict, the default, or
    paper: the JiuZhang/math-evaluation-harness decisions, percentage variants and relative 1e-4
    included), `grade_timeout_s` per grader per item, `grade_workers` processes (0: one per core).
    `shard_size` finished samples per file written (the unit of resumption).
    """

    datasets: list[str] = dataclasses.field(default_factory=lambda: ["jz3_mini"])
    setting: str = "cot"
    data_dir: str = ""
    limit: int = 0
    shots: int = -1
    max_tool_calls: int = 4
    chat_template: bool = False
    max_new_tokens: int = 1024
    tool_timeout_s: float = 5.0
    tool_memory_mb: int = 1024
    tool_output_chars: int = 400
    sandbox_workers: int = 4
    isolation: str = "auto"
    allow_unsandboxed: bool = False
    grade_policy: str = "strict"
    grade_timeout_s: float = 3.0
    grade_workers: int = 0
    shard_size: int = 16


@dataclasses.dataclass
class GradeConfig:
    """`grade` stage: regrade a stored generations file (jsonl with `dataset`, `generation`, `gold`
    and `choices` for multiple choice; `eval`'s samples.jsonl is one) without generating.

    `policy`: strict (default) or paper (see `EvalConfig.grade_policy`); `timeout_s` per grader
    per item; `workers` grading processes (0: one per core)."""

    input: str = ""
    policy: str = "strict"
    timeout_s: float = 3.0
    workers: int = 0
