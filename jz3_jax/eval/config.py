"""The `eval` and `grade` sections (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EvalConfig:
    """`eval` stage: generate answers on math benchmarks (CoT or tool) and grade them."""


@dataclasses.dataclass
class GradeConfig:
    """`grade` stage: regrade a stored generations file."""
