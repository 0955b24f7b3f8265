"""What `synthesize` and `filter` read."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.decoding.spec import DecodeSpec
from jz3_jax.synth.config import FilterConfig, SynthesizeConfig


@dataclasses.dataclass(frozen=True)
class SynthesizeSpec(DecodeSpec):
    synthesize: SynthesizeConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ("corpus.snippets",)
    PRODUCES: ClassVar[tuple[str, ...]] = ("synthesize.completions", "synthesize.report")


@dataclasses.dataclass(frozen=True)
class FilterSpec:
    filter: FilterConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ("synthesize.completions",)
    PRODUCES: ClassVar[tuple[str, ...]] = ("filter.records", "filter.removed", "filter.report")
