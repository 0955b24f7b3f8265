"""Mixtral's sparse mixture-of-experts MLP: router, top-k, SwiGLU experts, load-balancing statistics.

Each token's router logits pick its `k` best experts; the token's output is the sum of those
experts' SwiGLU outputs weighted by the softmax over the selected logits (= the full softmax's
top-k values renormalised, as transformers computes it). Two ways to run the experts:

- dropless (`moe_capacity_factor = 0`): the (token, expert) assignments are sorted by expert and
  every expert runs on exactly its tokens with `jax.lax.ragged_dot` (a grouped matmul); nothing is
  dropped. Under a mesh the sort stays local: a `shard_map` over the batch's mesh axes gives each
  shard its own tokens and the whole expert weights (gathered like FSDP weights), so no token
  crosses chips and no global sort is compiled.
- capacity (`moe_capacity_factor = cf > 0`, for ablations): each row of the batch gives every
  expert at most `ceil(cf * length * k / experts)` slots, filled first-choice first (GShard / Switch
  order); assignments past the capacity are dropped (the token keeps its residual only) and counted.
  Tokens are dispatched into an [experts, rows, capacity, embed] buffer whose expert dimension is
  constrained to the `experts` logical axis, so with `mesh.expert > 1` the compiler moves tokens to
  their experts' chips with an all-to-all (expert parallelism).

Every layer also returns `MoEStats`, the sums transformers' `load_balancing_loss_func` is built
from; the decoder adds them over layers and `load_balancing_loss` turns them into the aux loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from jz3_jax.model.config import ModelConfig
from jz3_jax.model.params import constrain, dtype_of, param


class MoEStats(NamedTuple):
    """Router statistics summed over layers (and non-padding tokens)."""

    assignments: jax.Array  # [experts] float32: top-k selections per expert
    probs: jax.Array  # [experts] float32: router probabilities per expert
    rows: jax.Array  # [] float32: tokens counted (per layer, summed over layers)
    dropped: jax.Array  # [] float32: (token, expert) assignments dropped for capacity

    def __add__(self, other: "MoEStats") -> "MoEStats":  # type: ignore[override]
        return MoEStats(*(a + b for a, b in zip(self, other)))

    @staticmethod
    def zeros(num_experts: int) -> "MoEStats":
        z = jnp.zeros((), jnp.float32)
        return MoEStats(jnp.zeros((num_experts,), jnp.float32), jnp.zeros((num_experts,), jnp.float32), z, z)


def load_balancing_loss(stats: MoEStats) -> jax.Array:
    """transformers' `load_balancing_loss_func`: experts x sum_e (fraction of top-k picks of e) x
    (mean router probability of e), both averaged over every layer's tokens."""
    rows = jnp.maximum(stats.rows, 1.0)
    return stats.assignments.shape[0] * jnp.sum((stats.assignments / rows) * (stats.probs / rows))


def route(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(softmax probabilities [n, E], top-k expert ids [n, k], their renormalised weights [n, k])."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top, experts = jax.lax.top_k(probs, k)
    return probs, experts, top / jnp.sum(top, axis=-1, keepdims=True)


def router_stats(probs: jax.Array, experts: jax.Array, mask: jax.Array) -> MoEStats:
    """One layer's statistics from probs [n, E], top-k ids [n, k] and a token mask [n] (1 = counted)."""
    picks = jnp.sum(jax.nn.one_hot(experts, probs.shape[-1], dtype=jnp.float32), axis=1)  # [n, E]
    return MoEStats(jnp.sum(picks * mask[:, None], axis=0), jnp.sum(probs * mask[:, None], axis=0),
                    jnp.sum(mask), jnp.zeros((), jnp.float32))


def capacity(length: int, k: int, num_experts: int, factor: float) -> int:
    """Slots per expert per row of `length` tokens for capacity factor `factor`."""
    return max(1, math.ceil(factor * length * k / num_experts))


def _swiglu_grouped(x, gate, up, down, group_sizes):
    """Experts' SwiGLU on rows `x` [n, embed] sorted by expert (`group_sizes` [E] rows each)."""
    h = jax.nn.silu(jax.lax.ragged_dot(x, gate, group_sizes)) * jax.lax.ragged_dot(x, up, group_sizes)
    return jax.lax.ragged_dot(h, down, group_sizes)


def dropless_experts(rows, experts, weights, gate, up, down):
    """Sum over each token's k experts of weight x expert(token), sorted by expert, no token dropped.

    rows [n, embed], experts/weights [n, k], gate/up [E, embed, mlp], down [E, mlp, embed]."""
    n, k = experts.shape
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    sizes = jnp.bincount(flat, length=gate.shape[0]).astype(jnp.int32)
    out = _swiglu_grouped(rows[order // k], gate, up, down, sizes)
    unsorted = jnp.zeros_like(out).at[order].set(out).reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", unsorted, weights.astype(out.dtype)), jnp.zeros((), jnp.float32)


def _local_dropless(rows, experts, weights, gate, up, down, x_shape, rules):
    """`dropless_experts`, each batch shard sorting its own tokens (plain call without a mesh)."""
    from jz3_jax.runtime.sharding import logical_to_spec

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not rules:
        return dropless_experts(rows, experts, weights, gate, up, down)
    axes = logical_to_spec(("batch", None, None), dict(rules), mesh, x_shape)[0]
    if axes is None:
        return dropless_experts(rows, experts, weights, gate, up, down)
    names = axes if isinstance(axes, tuple) else (axes,)
    tokens, whole = P(axes, None), P()
    fn = jax.shard_map(lambda *a: dropless_experts(*a)[0], mesh=mesh, in_specs=(tokens, tokens, tokens) + (whole,) * 3,
                       out_specs=tokens, axis_names=frozenset(names), check_vma=False)
    return fn(rows, experts, weights, gate, up, down), jnp.zeros((), jnp.float32)


def capacity_experts(x, experts, weights, mask, gate, up, down, factor: float, rules: tuple):
    """Capacity-limited experts over x [b, t, embed] (top-k ids/weights [b, t, k], token mask [b, t]).

    Returns (output [b, t, embed], number of non-padding assignments dropped)."""

    b, t, e = x.shape
    k, num_experts = experts.shape[-1], gate.shape[0]
    cap = capacity(t, k, num_experts, factor)
    # Priority: every token's first choice, then its second, ... (k-major), in token order.
    choice = experts.transpose(0, 2, 1).reshape(b, k * t)
    one_hot = jax.nn.one_hot(choice, num_experts, dtype=jnp.int32)  # [b, k*t, E]
    position = jnp.sum((jnp.cumsum(one_hot, axis=1) - 1) * one_hot, axis=-1)  # slot within its expert
    kept = position < cap
    slot = jnp.where(kept, choice * cap + position, num_experts * cap)  # dropped -> a spare slot
    token = jnp.tile(jnp.arange(t), k)
    buffer = jnp.zeros((b, num_experts * cap + 1, e), x.dtype)
    buffer = jax.vmap(lambda buf, s, xs: buf.at[s].set(xs[token]))(buffer, slot, x)
    dispatched = buffer[:, :-1].reshape(b, num_experts, cap, e).transpose(1, 0, 2, 3)
    dispatched = constrain(dispatched, ("experts", "batch", None, None), rules)  # the all-to-all
    h = jax.nn.silu(jnp.einsum("ebcd,edm->ebcm", dispatched, gate)) * jnp.einsum("ebcd,edm->ebcm", dispatched, up)
    out = jnp.einsum("ebcm,emd->ebcd", h, down)
    out = constrain(out, ("experts", "batch", None, None), rules)
    out = out.transpose(1, 0, 2, 3).reshape(b, num_experts * cap, e)
    out = jnp.concatenate([out, jnp.zeros((b, 1, e), out.dtype)], axis=1)  # the spare slot reads zeros
    gathered = jnp.take_along_axis(out, slot[..., None], axis=1).reshape(b, k, t, e)
    y = jnp.einsum("bktd,btk->btd", gathered, weights.astype(out.dtype))
    real = jnp.tile(mask, (1, k)).astype(jnp.float32)
    return y, jnp.sum((1.0 - kept.astype(jnp.float32)) * real)


class MoE(nnx.Module):
    """Mixtral's sparse MoE block: router [embed, experts] and stacked SwiGLU experts."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):

        e, m, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts
        if not 1 <= cfg.experts_per_token <= n:
            raise ValueError(f"experts_per_token must be in 1..{n}, got {cfg.experts_per_token}")
        self.router = param(rngs, (e, n), ("embed", None), cfg)
        self.gate = param(rngs, (n, e, m), ("experts", "embed", "mlp"), cfg)
        self.up = param(rngs, (n, e, m), ("experts", "embed", "mlp"), cfg)
        self.down = param(rngs, (n, m, e), ("experts", "mlp", "embed"), cfg)
        self.k = cfg.experts_per_token
        self.capacity_factor = cfg.moe_capacity_factor
        self.dtype = dtype_of(cfg.dtype)

    def __call__(self, x: jax.Array, segment_ids: jax.Array, rules: tuple) -> tuple[jax.Array, MoEStats]:
        """x [batch, length, embed] -> (output like x, this layer's MoEStats; padding = segment 0)."""
        b, t, e = x.shape
        rows = x.reshape(b * t, e)
        logits = jnp.dot(rows, self.router[...].astype(self.dtype), preferred_element_type=jnp.float32)
        probs, experts, weights = route(logits, self.k)
        mask = (segment_ids > 0).reshape(-1).astype(jnp.float32)
        stats = router_stats(probs, experts, mask)
        gate, up, down = (getattr(self, n)[...].astype(self.dtype) for n in ("gate", "up", "down"))
        if self.capacity_factor > 0:
            out, dropped = capacity_experts(x, experts.reshape(b, t, -1), weights.reshape(b, t, -1),
                                            mask.reshape(b, t), gate, up, down, self.capacity_factor, rules)
        else:
            out, dropped = _local_dropless(rows, experts, weights, gate, up, down, x.shape, rules)
        return out.reshape(x.shape).astype(x.dtype), stats._replace(dropped=dropped)
