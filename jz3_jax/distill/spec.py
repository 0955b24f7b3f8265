"""What the `distill` stage reads: the teacher, its own section and the root seed."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.distill.config import DistillConfig, TeacherConfig


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    seed: int
    distill: DistillConfig
    teacher: TeacherConfig

    # `distill.snippets` defaults to the selected snippets when a `select` ran, else the corpus.
    CONSUMES: ClassVar[tuple[str, ...]] = ("select.selected", "corpus.snippets")
    PRODUCES: ClassVar[tuple[str, ...]] = ("distill.kd", "distill.report")
