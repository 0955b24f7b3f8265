"""Learning-rate schedules: constant, linear, cosine and warmup-stable-decay (WSD).

All start with a linear warm-up over `ceil(warmup_fraction * total_steps)` steps that reaches the
peak at the last warm-up step. WSD then stays at the peak until step
`floor(stable_fraction * total_steps)` and decays linearly to `min_lr_fraction * peak` at the
last step (`total_steps - 1`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from jz3_jax.errors import ConfigError
from jz3_jax.train.config import OptimizerConfig

SCHEDULES = ("constant", "linear", "cosine", "wsd")


def warmup_steps(cfg: OptimizerConfig, total_steps: int) -> int:
    return min(total_steps, math.ceil(cfg.warmup_fraction * total_steps))


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step index (0 = first update)."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if total_steps < 1:
        raise ConfigError(f"the schedule needs at least one step, got {total_steps}")
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_fraction
    warm = warmup_steps(cfg, total_steps)
    last = total_steps - 1
    decay_start = max(warm, math.floor(cfg.stable_fraction * total_steps)) if cfg.schedule == "wsd" else warm

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = peak * jnp.minimum(1.0, (step + 1) / max(warm, 1))
        # fraction of the decay phase done: 0 at its first step, 1 at the last step
        done = jnp.clip((step - decay_start + 1) / max(last - decay_start + 1, 1), 0.0, 1.0)
        if cfg.schedule == "constant":
            after = jnp.full_like(step, peak)
        elif cfg.schedule == "cosine":
            after = floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * done))
        else:  # linear and wsd decay linearly; wsd only from decay_start on
            after = peak - (peak - floor) * done
        return jnp.where(step < warm, warmup, after)

    return schedule
