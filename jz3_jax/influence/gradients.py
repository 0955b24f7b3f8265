"""Per-example gradients with respect to the LoRA adapters, and the features built from them.

`vmap` of `grad` over the examples of a padded micro-batch: each example's loss is the mean
next-token NLL over its own loss-masked (`output`) tokens, its padding sits after its last token
(causal attention never looks at it) and is masked out, so an example's gradient in a padded batch
equals its gradient alone. The frozen base is closed over and never differentiated.

Candidate features use the Adam update direction of a warm-up checkpoint (LESS):
    (b1 * m + (1 - b1) * g) / sqrt(b2 * v + (1 - b2) * g^2 + eps)
target features the plain gradient; both are then projected (`projection.project`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jz3_jax.influence.projection import project
from jz3_jax.train.step import token_losses


def example_loss(graphdef, lora, frozen, tokens, targets, loss_mask) -> jax.Array:
    """Mean masked NLL of one example ([length] arrays), padded or not."""
    length = tokens.shape[0]
    batch = {"tokens": tokens[None], "targets": targets[None], "loss_mask": loss_mask[None],
             "segment_ids": jnp.ones((1, length), jnp.int32),
             "positions": jnp.arange(length, dtype=jnp.int32)[None]}
    loss_sum, count = token_losses(graphdef, lora, frozen, batch)
    return loss_sum / jnp.maximum(count, 1.0)


def per_example_grads(graphdef, lora, frozen, batch: dict) -> Any:
    """LoRA gradients of every example of `batch` ([rows, length] tokens/targets/loss_mask): leaves [rows, ...]."""
    grad = jax.grad(lambda p, t, y, m: example_loss(graphdef, p, frozen, t, y, m))
    return jax.vmap(grad, in_axes=(None, 0, 0, 0))(lora, batch["tokens"], batch["targets"], batch["loss_mask"])


def adam_direction(grads, mu, nu, b1: float, b2: float, eps: float):
    """The Adam update direction of per-example `grads` ([rows, ...] leaves) given moments (LESS's formula)."""
    def one(g, m, v):
        m = m.astype(jnp.float32)[None]
        v = v.astype(jnp.float32)[None]
        return (b1 * m + (1 - b1) * g) / jnp.sqrt(b2 * v + (1 - b2) * g * g + eps)

    return jax.tree.map(one, grads, mu, nu)


def feature_fn(graphdef, *, k: int, seed: int, projection: str, adam: tuple[float, float, float] | None
               ) -> Callable:
    """A pure function (lora, frozen, moments, batch) -> [rows, k] projected features.

    `adam=(b1, b2, eps)` gives Adam features (moments = (mu, nu) trees like `lora`); None gives plain
    gradient features (moments ignored)."""

    def features(lora, frozen, moments, batch):
        grads = per_example_grads(graphdef, lora, frozen, batch)
        if adam is not None:
            grads = adam_direction(grads, moments[0], moments[1], *adam)
        return project(grads, k, seed, projection)

    return features
