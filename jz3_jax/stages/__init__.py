"""The stage registry: every stage the launcher knows, what it does, and where its code lives."""

from jz3_jax.stages.registry import STAGES, Stage, StageContext, StageNotImplemented, get_stage

__all__ = ["STAGES", "Stage", "StageContext", "StageNotImplemented", "get_stage"]
