"""The `corpus` section (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class CorpusConfig:
    """`corpus` stage: math texts in, snippets of at most `max_chars` characters out."""
