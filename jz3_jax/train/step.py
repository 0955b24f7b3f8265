"""The jitted, sharded train and eval steps.

The model is split into (graphdef, trainable, frozen): all parameters train, or only the LoRA
adapters when LoRA is on. A global batch arrives as [grad_accum, rows, length] arrays; the step
scans over the micro-batches, sums the token losses and gradients, and normalises once by the
number of target tokens, so the loss is the token-weighted mean over the whole global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class StepFns:
    train: Any
    eval: Any


def token_losses(graphdef, trainable, frozen, batch: dict, dropout_key=None) -> tuple[jax.Array, jax.Array]:
    """(sum of masked next-token NLL, number of target tokens) for one micro-batch."""
    model = nnx.merge(graphdef, trainable, frozen)
    logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"], dropout_key=dropout_key)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"].astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def make_steps(graphdef, tx: optax.GradientTransformation, schedule, seed: int, lora_dropout: bool) -> StepFns:
    """Pure train/eval step functions (jit them with the shardings of the caller's mesh)."""

    def train_step(state: dict, frozen, batch: dict):
        params, step = state["params"], state["step"]
        base_key = jax.random.fold_in(jax.random.key(seed), step) if lora_dropout else None
        # Known before any forward pass: dividing each micro-batch's loss by the global count makes
        # the summed gradients the token-weighted mean directly (no extra pass over the gradients).
        count = jnp.sum(batch["loss_mask"].astype(jnp.float32))
        denom = jnp.maximum(count, 1.0)

        def micro_grads(micro_batch, index):
            key = None if base_key is None else jax.random.fold_in(base_key, index)
            loss = lambda p: token_losses(graphdef, p, frozen, micro_batch, key)[0] / denom
            return jax.value_and_grad(loss)(params)

        accum = batch["tokens"].shape[0]
        if accum == 1:
            loss, grads = micro_grads(jax.tree.map(lambda x: x[0], batch), 0)
        else:
            def body(carry, xs):
                loss, grads = micro_grads(*xs)
                return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads)), None

            zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
            (loss, grads), _ = jax.lax.scan(body, zeros, (batch, jnp.arange(accum)))
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": step + 1}
        tokens = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))  # all tokens of the global batch
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(step), "target_tokens": count,
                   "tokens": tokens}
        return new_state, metrics

    def eval_step(params, frozen, batch: dict):
        loss_sum, count = token_losses(graphdef, params, frozen, batch)
        return {"loss_sum": loss_sum, "target_tokens": count}

    return StepFns(train_step, eval_step)


def flops_per_token(cfg, length: int) -> float:
    """Training FLOPs per token: 6 x the parameters used in matmuls, plus attention scores/values."""
    d, e = cfg.resolved_head_dim, cfg.hidden_size
    per_layer = e * d * (cfg.num_heads + 2 * cfg.num_kv_heads) + cfg.num_heads * d * e + 3 * e * cfg.intermediate_size
    matmul_params = cfg.num_layers * per_layer + cfg.vocab_size * e
    attention = cfg.num_layers * 2 * 2 * cfg.num_heads * d * length  # QK^T and PV per token, forward
    return 6 * matmul_params + 3 * attention
