"""Which (level, kind) prompts a snippet gets: the policy shared by `distill` and `synthesize`.

Policies: `random` (one level per snippet, drawn from the allowed levels by a hash of the seed and
the snippet id, so the choice is the same in every run and every process), `all` (every allowed
level) and `fixed` (the first allowed level only). Every allowed kind is used for each chosen level.
Per-source overrides (`SOURCE=item+item`) replace the allowed levels or kinds for that source.
"""

from __future__ import annotations

import dataclasses
import hashlib

from jz3_jax.errors import UserError
from jz3_jax.prompts.config import KINDS, LEVELS, POLICIES, PromptPlanConfig
from jz3_jax.prompts.library import render


class PromptPlanError(UserError):
    """A bad levels / kinds / policy setting; the message names the key."""


@dataclasses.dataclass(frozen=True)
class PlannedPrompt:
    """One rendered prompt for one snippet."""

    snippet_id: str
    source: str
    level: str
    kind: str
    prompt: str

    @property
    def id(self) -> str:
        return f"{self.snippet_id}:{self.level}:{self.kind}"


@dataclasses.dataclass(frozen=True)
class PromptPlan:
    """The settings of one stage (`distill.*` or `synthesize.*`), checked once."""

    levels: tuple[str, ...]
    kinds: tuple[str, ...]
    policy: str
    seed: int
    source_levels: dict[str, tuple[str, ...]]
    source_kinds: dict[str, tuple[str, ...]]

    @classmethod
    def build(cls, section: str, levels, kinds, policy: str, seed: int, source_levels=(), source_kinds=()):
        """Check the settings of `section` (e.g. "distill") and return the plan; errors name the key."""
        levels = _checked(f"{section}.levels", levels or LEVELS, LEVELS)
        kinds = _checked(f"{section}.kinds", kinds or ("cot",), KINDS)
        if policy not in POLICIES:
            raise PromptPlanError(f"{section}.level_policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        return cls(levels, kinds, policy, seed,
                   _overrides(f"{section}.source_levels", source_levels, LEVELS),
                   _overrides(f"{section}.source_kinds", source_kinds, KINDS))

    @classmethod
    def from_config(cls, section: str, settings: PromptPlanConfig, seed: int) -> PromptPlan:
        """The plan of a `distill` or `synthesize` section (`section` names it in errors)."""
        return cls.build(section, settings.levels, settings.kinds, settings.level_policy, seed,
                         settings.source_levels, settings.source_kinds)

    def choices(self, snippet_id: str, source: str) -> list[tuple[str, str]]:
        """The (level, kind) pairs for one snippet."""
        levels = self.source_levels.get(source, self.levels)
        kinds = self.source_kinds.get(source, self.kinds)
        if self.policy == "all":
            chosen = levels
        elif self.policy == "fixed":
            chosen = levels[:1]
        else:
            digest = hashlib.sha256(f"{self.seed}\0{snippet_id}".encode()).digest()
            chosen = (levels[int.from_bytes(digest[:8], "little") % len(levels)],)
        return [(level, kind) for level in chosen for kind in kinds]

    def prompts(self, snippet_id: str, source: str, text: str) -> list[PlannedPrompt]:
        """The rendered prompts for one snippet, in (level, kind) order."""
        return [self.prompt(snippet_id, source, text, level, kind) for level, kind in self.choices(snippet_id, source)]

    @staticmethod
    def prompt(snippet_id: str, source: str, text: str, level: str, kind: str) -> PlannedPrompt:
        """The one prompt of a snippet for one of its `choices` (rendered on demand)."""
        return PlannedPrompt(snippet_id, source, level, kind, render(text, level, kind))


def _checked(key: str, values, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(values)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise PromptPlanError(f"{key}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise PromptPlanError(f"{key} lists a value twice: {', '.join(values)}")
    return values


def _overrides(key: str, entries, allowed: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Parse `SOURCE=a+b` entries into {source: (a, b)}."""
    result: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        source, sep, items = entry.partition("=")
        if not sep or not source.strip() or not items.strip():
            raise PromptPlanError(f"{key}: expected SOURCE=item+item, got {entry!r}")
        result[source.strip()] = _checked(f"{key} ({source.strip()})", [i.strip() for i in items.split("+")], allowed)
    return result
