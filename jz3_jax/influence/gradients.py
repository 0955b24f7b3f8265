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


def per_example_grads(graphdef, lora, frozen, batch: dict, chunk: int = 0) -> Any:
    """LoRA gradients of every example of `batch` ([rows, length] tokens/targets/loss_mask): leaves [rows, ...].

    `chunk` > 0: `vmap` over `chunk` rows at a time inside a `lax.map` (rows must divide by it), so
    every example goes through the same loop body whatever the number of rows (even a single
    chunk): XLA:CPU picks other matrix-product strategies for larger operands, and fuses a loop
    body differently from straight-line code, and either changes the rounding."""
    grad = jax.grad(lambda p, t, y, m: example_loss(graphdef, p, frozen, t, y, m))
    vmapped = jax.vmap(grad, in_axes=(None, 0, 0, 0))
    arrays = (batch["tokens"], batch["targets"], batch["loss_mask"])
    rows = arrays[0].shape[0]
    if chunk <= 0:
        return vmapped(lora, *arrays)
    if rows % chunk:
        raise ValueError(f"{rows} rows do not divide into chunks of {chunk}")
    chunks = tuple(a.reshape(rows // chunk, chunk, *a.shape[1:]) for a in arrays)
    grads = jax.lax.map(lambda xs: vmapped(lora, *xs), chunks)
    return jax.tree.map(lambda g: g.reshape(rows, *g.shape[2:]), grads)


def adam_direction(grads, mu, nu, b1: float, b2: float, eps: float):
    """The Adam update direction of per-example `grads` ([rows, ...] leaves) given moments (LESS's formula)."""
    def one(g, m, v):
        m = m.astype(jnp.float32)[None]
        v = v.astype(jnp.float32)[None]
        return (b1 * m + (1 - b1) * g) / jnp.sqrt(b2 * v + (1 - b2) * g * g + eps)

    return jax.tree.map(one, grads, mu, nu)


def feature_fn(graphdef, *, k: int, seed: int, projection: str, adam: tuple[float, float, float] | None,
               chunk: int = 0) -> Callable:
    """A pure function (lora, frozen, moments, batch) -> [rows, k] projected features.

    `adam=(b1, b2, eps)` gives Adam features (moments = (mu, nu) trees like `lora`); None gives plain
    gradient features (moments ignored). `chunk`: rows per `vmap` (`per_example_grads`)."""

    def features(lora, frozen, moments, batch):
        grads = per_example_grads(graphdef, lora, frozen, batch, chunk)
        if adam is not None:
            grads = adam_direction(grads, moments[0], moments[1], *adam)
        return project(grads, k, seed, projection)

    return features
