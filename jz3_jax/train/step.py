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

from jz3_jax.model.moe import load_balancing_loss
from jz3_jax.train.loss import token_nll

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class StepFns:
    train: Any
    eval: Any


def token_losses(graphdef, trainable, frozen, batch: dict, dropout_key=None,
                 loss_chunk: int = 0, with_aux: bool = False) -> tuple[jax.Array, ...]:
    """(sum of masked next-token NLL, number of target tokens) for one micro-batch; `loss_chunk`
    > 0 computes the LM head and loss over that many positions at a time (`train/loss.py`).
    `with_aux` appends the mixture-of-experts router statistics (`MoEStats`)."""
    model = nnx.merge(graphdef, trainable, frozen)
    hidden, _, stats = model.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"],
                                           dropout_key=dropout_key, return_aux=True)
    nll = token_nll(model, hidden, batch["targets"], batch["loss_mask"], loss_chunk)
    return (*nll, stats) if with_aux else nll


def make_steps(graphdef, tx: optax.GradientTransformation, schedule, seed: int, lora_dropout: bool,
               loss_chunk: int = 0) -> StepFns:
    """Pure train/eval step functions (jit them with the shardings of the caller's mesh)."""

    def train_step(state: dict, frozen, batch: dict):
        params, step = state["params"], state["step"]
        base_key = jax.random.fold_in(jax.random.key(seed), step) if lora_dropout else None
        # Known before any forward pass: dividing each micro-batch's loss by the global count makes
        # the summed gradients the token-weighted mean directly (no extra pass over the gradients).
        count = jnp.sum(batch["loss_mask"].astype(jnp.float32))
        denom = jnp.maximum(count, 1.0)
        accum = batch["tokens"].shape[0]
        model_cfg = nnx.merge(graphdef, params, frozen).cfg

        def micro_grads(micro_batch, index):
            """((NLL / denom, MoE metrics), gradients); a Mixtral model's gradients include
            router_aux_loss_coef x the load-balancing loss (averaged over the micro-batches)."""
            key = None if base_key is None else jax.random.fold_in(base_key, index)

            def loss(p):
                nll, _, stats = token_losses(graphdef, p, frozen, micro_batch, key, loss_chunk, with_aux=True)
                if not model_cfg.is_moe:
                    return nll / denom, (nll / denom, {})
                moe = {"router_aux_loss": load_balancing_loss(stats) / accum, "tokens_dropped": stats.dropped}
                return nll / denom + model_cfg.router_aux_loss_coef * moe["router_aux_loss"], (nll / denom, moe)

            (_, parts), grads = jax.value_and_grad(loss, has_aux=True)(params)
            return parts, grads

        if accum == 1:
            (loss, moe), grads = micro_grads(jax.tree.map(lambda x: x[0], batch), 0)
        else:
            def body(carry, xs):
                parts, grads = micro_grads(*xs)
                return (jax.tree.map(jnp.add, carry[0], parts), jax.tree.map(jnp.add, carry[1], grads)), None

            moe0 = {"router_aux_loss": jnp.zeros(()), "tokens_dropped": jnp.zeros(())} if model_cfg.is_moe else {}
            zeros = ((jnp.zeros(()), moe0), jax.tree.map(jnp.zeros_like, params))
            ((loss, moe), grads), _ = jax.lax.scan(body, zeros, (batch, jnp.arange(accum)))
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": step + 1}
        tokens = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))  # all tokens of the global batch
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(step), "target_tokens": count,
                   "tokens": tokens, **moe}
        return new_state, metrics

    def eval_step(params, frozen, batch: dict):
        loss_sum, count = token_losses(graphdef, params, frozen, batch, loss_chunk=loss_chunk)
        return {"loss_sum": loss_sum, "target_tokens": count}

    return StepFns(train_step, eval_step)


def flops_per_token(cfg, length: int) -> float:
    """Training FLOPs per token: 6 x the parameters used in matmuls, plus attention scores/values.

    A mixture of experts counts the router and the `experts_per_token` experts a token runs through."""
    d, e = cfg.resolved_head_dim, cfg.hidden_size
    mlp = 3 * e * cfg.intermediate_size
    if cfg.is_moe:
        mlp = mlp * cfg.experts_per_token + e * cfg.num_experts
    per_layer = e * d * (cfg.num_heads + 2 * cfg.num_kv_heads) + cfg.num_heads * d * e + mlp
    matmul_params = cfg.num_layers * per_layer + cfg.vocab_size * e
    attention = cfg.num_layers * 2 * 2 * cfg.num_heads * d * length  # QK^T and PV per token, forward
    return 6 * matmul_params + 3 * attention
