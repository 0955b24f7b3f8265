"""The `select` section (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SelectConfig:
    """`select` stage: LESS-style gradient-influence scores of candidates against targets."""
