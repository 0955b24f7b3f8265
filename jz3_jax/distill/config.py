"""The `distill` and `teacher` sections (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TeacherConfig:
    """The teacher: any OpenAI-compatible chat endpoint."""


@dataclasses.dataclass
class DistillConfig:
    """`distill` stage: snippets x education levels x kinds -> teacher requests -> the KD dataset."""
