"""LoRA adapters on the decoder's projections (q, k, v, o, gate, up, down).

`add_lora` attaches a low-rank pair (A, B) beside each targeted weight W; the layer then computes
x W + scale * dropout(x) A B with scale = alpha / rank. A starts small and random, B at zero, so
a fresh adapter leaves the model unchanged. Adapter weights are `LoRAParam` variables (not
`nnx.Param`), which is how the trainer trains and saves only them; `merge_lora` folds them into W.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jz3_jax.model.layer_stack import is_stacked, layer_modules, per_layer, split_layer_shape

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# target -> (owner module attribute, number of input dims of W, logical axes of W)
LAYOUT = {
    "q": ("attn", 1), "k": ("attn", 1), "v": ("attn", 1), "o": ("attn", 2),
    "gate": ("mlp", 1), "up": ("mlp", 1), "down": ("mlp", 1),
}


class LoRAParam(nnx.Variable):
    """A LoRA adapter weight: with LoRA on, the only variables that train."""


class LoRA(nnx.Module):
    """One adapter: a [*in, rank], b [rank, *out]."""

    def __init__(self, a: jax.Array, b: jax.Array, in_axes: tuple, out_axes: tuple, scale: float, dropout: float):
        self.a = LoRAParam(a, logical_axes=in_axes + (None,))
        self.b = LoRAParam(b, logical_axes=(None,) + out_axes)
        self.scale = scale
        self.dropout = dropout

    def __call__(self, x: jax.Array, n_in: int, key: jax.Array | None) -> jax.Array:
        """The adapter's contribution for input `x` [..., *in] (contracting its last `n_in` dims)."""
        if self.dropout > 0 and key is not None:
            keep = 1.0 - self.dropout
            x = jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, 0).astype(x.dtype)
        a, b = self.a[...].astype(x.dtype), self.b[...].astype(x.dtype)
        h = jnp.tensordot(x, a, axes=n_in)
        tap_a, tap_b = getattr(self, "a_logra", None), getattr(self, "b_logra", None)  # `model/logra.py`
        if tap_a is not None:
            h = h + tap_a(x, n_in)
        u = jnp.tensordot(h, b, axes=1)
        if tap_b is not None:
            u = u + tap_b(h, 1)
        return u * self.scale


def adapter(module: nnx.Module, name: str) -> LoRA | None:
    """The adapter attached to weight `name` of `module`, if any."""
    return getattr(module, f"{name}_lora", None)


def add_lora(model, rank: int, alpha: float, dropout: float, targets, seed: int) -> None:
    """Attach adapters (in place) to every layer's targeted weights."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or rank < 1:
        raise ValueError(f"LoRA needs rank >= 1 and targets among {TARGETS}; got rank={rank}, unknown={unknown}")
    mlp_targets = sorted(set(targets) & {"gate", "up", "down"})
    if model.cfg.is_moe and mlp_targets:
        raise ValueError(f"LoRA on a mixture of experts' MLP ({', '.join(mlp_targets)}) is not supported: "
                         "adapt the attention only (lora.targets=q,k,v,o)")
    key = jax.random.key(seed)
    stacked = is_stacked(model)
    for li, layer in enumerate(layer_modules(model)):
        for ti, name in enumerate(targets):
            owner_name, n_in = LAYOUT[name]
            owner = getattr(layer, owner_name)
            weight = getattr(owner, name)
            shape, axes = weight.shape, weight.get_metadata()["logical_axes"]
            lead, w_shape = split_layer_shape(shape, stacked)
            in_shape, out_shape = w_shape[:n_in], w_shape[n_in:]
            bound = 1.0 / math.sqrt(np.prod(in_shape))  # the kaiming-uniform bound PEFT uses for A
            a = jax.random.uniform(jax.random.fold_in(key, li * 100 + ti), lead + in_shape + (rank,),
                                   weight.dtype, -bound, bound)
            b = jnp.zeros(lead + (rank,) + out_shape, weight.dtype)
            setattr(owner, f"{name}_lora", LoRA(a, b, tuple(axes[:n_in]), tuple(axes[n_in:]), alpha / rank, dropout))


def merge_lora(model) -> None:
    """Fold every adapter into its base weight (in place) and remove the adapters."""
    for layer in layer_modules(model):
        for name, (owner_name, n_in) in LAYOUT.items():
            owner = getattr(layer, owner_name, None)  # a mixture of experts has no `mlp`
            lora = None if owner is None else adapter(owner, name)
            if lora is None:
                continue
            weight = getattr(owner, name)
            a, b = lora.a[...].astype(jnp.float32), lora.b[...].astype(jnp.float32)
            delta = per_layer(lambda a, b: jnp.tensordot(a, b, axes=1), is_stacked(model))(a, b)
            weight[...] = (weight[...].astype(jnp.float32) + lora.scale * delta).astype(weight.dtype)
            delattr(owner, f"{name}_lora")
