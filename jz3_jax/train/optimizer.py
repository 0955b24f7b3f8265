"""AdamW with gradient clipping and no weight decay on norms and biases."""

from __future__ import annotations

import jax
import optax

from jz3_jax.train.config import OptimizerConfig
from jz3_jax.train.schedules import make_schedule


def decays(path: str) -> bool:
    """Whether the parameter at this key path gets weight decay (not norms, not biases)."""
    return "norm" not in path and "_bias" not in path


def decay_mask(params):
    """A pytree of bools: True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(jax.tree_util.keystr(path)), params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, learning-rate schedule)."""
    schedule = make_schedule(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule
