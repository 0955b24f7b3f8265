"""LoGra-style features: every example's Kronecker-projected gradient from one backward pass.

The model carries taps (`model/logra.py`) on the adapted matrices. One `jax.grad` of the sum over
examples of each example's mean masked NLL (the same per-example loss as `gradients.example_loss`)
with respect to the taps' zero bottlenecks gives, per example, P_out G^T P_in^T for every tapped
matrix's gradient G; the feature is their concatenation in tap order (target, part, layer).

Preconditioning (`select.precondition`) of candidate features:
- `none`: the plain projected gradient;
- `factored`: LESS's Adam direction (b1 m + (1 - b1) g) / sqrt(v) with v replaced, per matrix, by
  Adafactor's rank-one fit of V = b2 nu + eps: v_hat = R C^T / mean(R), R the row means and C the
  column means of V. Then 1 / sqrt(v_hat) = D_row^(-1/2) ⊗ D_col^(-1/2) x sqrt(mean R), which folds
  into P_in and P_out, and the momentum term b1 m, the same for every candidate, is projected once
  per step (P_out' m^T P_in'^T) and added to the (1 - b1) x projected gradient.
(The per-example (1 - b2) g^2 term of LESS's denominator is left out: it would break the structure.)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jz3_jax.model.logra import LograProj, LograZ, taps
from jz3_jax.model.lora import LoRAParam
from jz3_jax.model.params import constrain
from jz3_jax.train.loss import token_nll

PRECONDITIONS = ("none", "factored", "exact")


def tap_dims(proj_dim: int, matrices: int, logra_in: int = 0, logra_out: int = 0) -> tuple[int, int]:
    """(k_in, k_out) per matrix: the given ones, or `proj_dim` split evenly over `matrices`, near square."""
    if logra_in > 0 and logra_out > 0:
        return logra_in, logra_out
    per = proj_dim // max(matrices, 1)
    if per < 1:
        raise ValueError(f"proj_dim {proj_dim} is smaller than the {matrices} projected matrices")
    if logra_in > 0:
        return logra_in, max(1, per // logra_in)
    if logra_out > 0:
        return max(1, per // logra_out), logra_out
    # the largest k_in x k_out <= per with k_in <= k_out <= 2 k_in (34 -> 4 x 8 rather than 5 x 6)
    shapes = [(k * (per // k), k, per // k) for k in range(1, int(per ** 0.5) + 1) if per // k <= 2 * k]
    _, k_in, k_out = max(shapes or [(per, 1, per)])
    return k_in, k_out


def summed_example_losses(model, batch: dict, loss_chunk: int = 0) -> jax.Array:
    """Sum over the rows of each row's mean masked next-token NLL (an all-masked row adds 0)."""
    tokens = batch["tokens"]
    rows, length = tokens.shape
    mask = batch["loss_mask"].astype(jnp.float32)
    weights = mask / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length))
    hidden, _ = model.hidden_states(tokens, positions, jnp.ones((rows, length), jnp.int32))
    total, _ = token_nll(model, hidden, batch["targets"], weights, loss_chunk)
    return total


def _flat2(x: jax.Array, lead: int, n_rows: int) -> jax.Array:
    """[*lead, *rows_dims, *cols_dims] -> [*lead, rows, cols] with `n_rows` dims in the row group."""
    shape = x.shape[lead:]
    size = 1
    for d in shape[:n_rows]:
        size *= d
    return x.reshape(*x.shape[:lead], size, -1)


def factored_scales(nu: jax.Array, lead: int, n_in: int, b2: float, eps: float) -> tuple[jax.Array, jax.Array]:
    """(s_in [*lead, in], s_out [*lead, out]) with s_in[a] s_out[b] = 1 / sqrt(v_hat[a, b])."""
    v = b2 * _flat2(nu.astype(jnp.float32), lead, n_in) + eps
    rows, cols = jnp.mean(v, axis=-1), jnp.mean(v, axis=-2)
    mean = jnp.mean(rows, axis=-1, keepdims=True)
    return jnp.sqrt(mean) / jnp.sqrt(rows), 1.0 / jnp.sqrt(cols)


def kron_project(g: jax.Array, p_in: jax.Array, p_out: jax.Array, lead: int, n_in: int) -> jax.Array:
    """P_out G^T P_in^T of matrices g [*lead, *in, *out] -> [*lead, k_out, k_in] (one tap's feature)."""
    g2 = _flat2(g.astype(jnp.float32), lead, n_in)
    pin = p_in.reshape(*p_in.shape[:lead + 1], -1)
    pout = p_out.reshape(*p_out.shape[:lead + 1], -1)
    return jnp.einsum("...ob,...ab,...ia->...oi", pout, g2, pin, precision=jax.lax.Precision.HIGHEST)


def _n_in(tap, lead: int) -> int:
    return tap.p_in.ndim - lead - 1


def feature_fn(graphdef, targets, params: str, *, stacked: bool, precondition: str = "none",
               adam: tuple[float, float, float] | None = None, loss_chunk: int = 0,
               rules: tuple = ()) -> Callable:
    """A pure function (taps, lora, frozen, moments, batch) -> [rows, K] features.

    `taps` = (the model's `LograZ` (one row each), its `LograProj`) states, `lora` its `LoRAParam`
    state (may be empty), `frozen` the rest (`split_taps`). `precondition="factored"` with `adam=(b1, b2, eps)` gives candidate features from the moments
    (mu, nu) (trees like the LoRA state, or None); otherwise plain projected gradients."""
    lead = 1 if stacked else 0
    z_axes = (("layers",) if stacked else ()) + ("batch", None, None)

    def features(tap_state, lora, frozen, moments, batch):
        rows = batch["tokens"].shape[0]
        z_state, proj = tap_state
        zeros = jax.tree.map(lambda z: constrain(jnp.zeros(z.shape[:lead] + (rows,) + z.shape[lead + 1:],
                                                           jnp.float32), z_axes, rules), z_state)
        const = None
        if precondition == "factored":
            proj, const = _precondition(graphdef, targets, params, lead, z_state, proj, frozen, moments, adam)

        def loss(z):
            return summed_example_losses(nnx.merge(graphdef, z, proj, lora, frozen), batch, loss_chunk)

        grads = jax.grad(loss)(zeros)
        model = nnx.merge(graphdef, grads, proj, lora, frozen)
        parts = []
        for t, _ in taps(model, targets, params):
            g = t.z[...]  # [*lead, rows, k_out, k_in]
            if stacked:
                g = jnp.swapaxes(g, 0, 1)
            parts.append(g.reshape(rows, -1))
        out = jnp.concatenate(parts, axis=1)
        if const is not None:
            out = (1.0 - adam[0]) * out + adam[0] * const[None]
        return constrain(out, ("batch", None), rules)

    return features


def _precondition(graphdef, targets, params, lead, z_state, proj, frozen, moments, adam):
    """(the projection factors with the factored preconditioner folded in, the projected momentum [K])."""
    b1, b2, eps = adam
    mu, nu = moments
    model = nnx.merge(graphdef, z_state, proj, mu, frozen)  # the adapters' slots hold mu (then nu) here
    nu_taps = taps(nnx.merge(graphdef, z_state, proj, nu, frozen), targets, params)
    consts = []
    for (t, m), (_, v) in zip(taps(model, targets, params), nu_taps):
        n_in = _n_in(t, lead)
        s_in, s_out = factored_scales(v[...], lead, n_in, b2, eps)
        p_in = t.p_in[...] * s_in.reshape(*s_in.shape[:lead], 1, *t.p_in.shape[lead + 1:])
        p_out = t.p_out[...] * s_out.reshape(*s_out.shape[:lead], 1, *t.p_out.shape[lead + 1:])
        t.p_in[...], t.p_out[...] = p_in, p_out
        consts.append(kron_project(m[...], p_in, p_out, lead, n_in).reshape(-1))
    return nnx.state(model, LograProj), jnp.concatenate(consts)


def split_taps(model) -> tuple[nnx.GraphDef, tuple, nnx.State, nnx.State]:
    """(graphdef, (bottlenecks, projection factors), LoRA adapters, everything else) of a model with taps."""
    graphdef, z_state, proj, lora, rest = nnx.split(model, LograZ, LograProj, LoRAParam, ...)
    return graphdef, (z_state, proj), lora, rest
