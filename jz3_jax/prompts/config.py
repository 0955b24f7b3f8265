"""The prompt-plan settings shared by the `distill` and `synthesize` sections (a leaf module: constants
and one dataclass).

Both sections inherit `PromptPlanConfig`, so `distill.levels` and `synthesize.levels` (and the other
keys below) have one definition and one default. `LEVELS` and `KINDS` are the prompt library's
education stages and prompt kinds (`jz3_jax.prompts.library` renders them).
"""

from __future__ import annotations

import dataclasses

LEVELS = ("grade_school", "middle_school", "high_school", "college", "amc8", "amc10", "amc12", "aime")
KINDS = ("cot", "tool")
POLICIES = ("random", "all", "fixed")


@dataclasses.dataclass
class PromptPlanConfig:
    """Which prompts each snippet gets (see `jz3_jax.prompts.plan`).

    `snippets`: a jsonl of `id`, `source`, `text` ("" = the stage's default input). `levels`: the
    allowed education stages; `level_policy`: random (one level per snippet, from the run's seed),
    all, or fixed (the first level); `kinds`: cot, tool; `source_levels` / `source_kinds`:
    `SOURCE=a+b` entries that override levels or kinds for the snippets of one source tag.
    """

    snippets: str = ""
    levels: list[str] = dataclasses.field(default_factory=lambda: list(LEVELS))
    level_policy: str = "random"
    kinds: list[str] = dataclasses.field(default_factory=lambda: ["cot"])
    source_levels: list[str] = dataclasses.field(default_factory=list)
    source_kinds: list[str] = dataclasses.field(default_factory=list)
