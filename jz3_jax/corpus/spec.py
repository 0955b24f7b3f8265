"""What the `corpus` stage reads: its own section and the root seed."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.corpus.config import CorpusConfig


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    seed: int
    corpus: CorpusConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ()
    PRODUCES: ClassVar[tuple[str, ...]] = ("corpus.snippets", "corpus.report")
