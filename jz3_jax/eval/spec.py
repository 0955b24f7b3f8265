"""What `eval` (generate, then grade) and `grade` (grade a file) read."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jz3_jax.decoding.spec import DecodeSpec
from jz3_jax.eval.config import EvalConfig, GradeConfig


@dataclasses.dataclass(frozen=True)
class EvalSpec(DecodeSpec):
    eval: EvalConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ()  # model.checkpoint names the model
    PRODUCES: ClassVar[tuple[str, ...]] = ("eval.metrics", "eval.samples")


@dataclasses.dataclass(frozen=True)
class GradeSpec:
    grade: GradeConfig

    CONSUMES: ClassVar[tuple[str, ...]] = ()  # grade.input names the file
    PRODUCES: ClassVar[tuple[str, ...]] = ()
