"""LoGra-style taps: per-example Kronecker-projected gradients of chosen matrices from one backward pass.

`add_logra` attaches to each chosen matrix M (a LoRA adapter's A or B, or a base weight W) with
input x [*in] and output y [*out] a side branch

    y += P_out^T Z P_in x

with fixed random factors P_in [k_in, *in] and P_out [k_out, *out] (`LograProj`) and a per-example
bottleneck Z [batch, k_out, k_in] (`LograZ`) that is all zeros, so the branch changes nothing in
the forward pass. For a sum of per-example losses, the gradient with respect to Z[i] is

    sum_t (P_out g_t)(P_in x_t)^T = P_out G_i^T P_in^T,

example i's gradient G_i [in, out] of M (y = x M) projected by (P_out ⊗ P_in): every example's
projected gradient from one ordinary backward pass, without the gradient ever existing.

The factors are Rademacher signs / sqrt(k) drawn from (seed, target, part, layer), so they do not
depend on the layer layout, the device kind or count, the batch or the sharding, and
E[<P G1 P^T, P G2 P^T>] = <G1, G2>. The taps' variables are neither `nnx.Param` nor `LoRAParam`:
no trainer or optimizer ever sees them.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
from flax import nnx

from jz3_jax.model.layer_stack import is_stacked, layer_modules, split_layer_shape
from jz3_jax.model.lora import LAYOUT, adapter

PARAMS = ("lora", "linear")


class LograZ(nnx.Variable):
    """A per-example bottleneck (zeros): its gradient is the projected per-example gradient."""


class LograProj(nnx.Variable):
    """A fixed random projection factor of a tap."""


class Tap(nnx.Module):
    """The side branch P_out^T Z P_in x of one matrix (arrays carry a leading layer axis when stacked)."""

    def __init__(self, p_in: jax.Array, p_out: jax.Array, in_axes: tuple, out_axes: tuple):
        lead = p_in.shape[:-1 - len(in_axes)]
        self.p_in = LograProj(p_in, logical_axes=(None,) + in_axes)
        self.p_out = LograProj(p_out, logical_axes=(None,) + out_axes)
        k_in, k_out = p_in.shape[len(lead)], p_out.shape[len(lead)]
        self.z = LograZ(jnp.zeros(lead + (1, k_out, k_in), jnp.float32), logical_axes=("batch", None, None))

    def __call__(self, x: jax.Array, n_in: int) -> jax.Array:
        """The branch's output for rows x [batch * length, *in] (zero; its gradient is what counts)."""
        z = self.z[...]
        batch, k_out, k_in = z.shape
        rows = x.shape[0]
        dims = tuple(range(1, 1 + n_in))
        xin = jnp.tensordot(x.astype(jnp.float32), self.p_in[...], axes=(dims, dims))  # [rows, k_in]
        mid = jnp.einsum("btk,bok->bto", xin.reshape(batch, rows // batch, k_in), z)
        return jnp.tensordot(mid.reshape(rows, k_out), self.p_out[...], axes=1).astype(x.dtype)


def tap(module: nnx.Module, name: str) -> Tap | None:
    """The tap attached to matrix `name` of `module` (a layer's owner module or a `LoRA`), if any."""
    return getattr(module, f"{name}_logra", None)


def factor(seed: int, path: str, layer: int, k: int, shape: tuple) -> jax.Array:
    """A [k, *shape] Rademacher factor scaled by 1 / sqrt(k), from (seed, path, layer) only."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode()) & 0x7FFFFFFF), layer)
    return jax.random.rademacher(key, (k, *shape), jnp.float32) / jnp.sqrt(jnp.float32(k))


def _parts(owner: nnx.Module, name: str, params: str) -> list[tuple[str, nnx.Module, str, int]]:
    """(part label, module holding the matrix, matrix attribute, input dims) of target `name`."""
    n_in = LAYOUT[name][1]
    if params == "linear":
        return [("w", owner, name, n_in)]
    lora = adapter(owner, name)
    if lora is None:
        raise ValueError(f"select.params=lora needs a LoRA adapter on {name!r}")
    return [("a", lora, "a", n_in), ("b", lora, "b", 1)]


def _walk(model, targets, params: str):
    """(target, part, module, attribute, n_in, layer indices) of every tapped matrix, in feature order:
    target, then part, then layer (one entry covers every layer of a stacked model)."""
    if params not in PARAMS:
        raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
    modules = layer_modules(model)
    stacked = is_stacked(model)
    for name in targets:
        for index in range(len(_parts(getattr(modules[0], LAYOUT[name][0]), name, params))):
            for li, layer in enumerate(modules):
                part, module, attr, n_in = _parts(getattr(layer, LAYOUT[name][0]), name, params)[index]
                yield name, part, module, attr, n_in, (list(range(model.cfg.num_layers)) if stacked else [li])


def count_matrices(model, targets, params: str) -> int:
    """How many matrices (per layer) the taps cover."""
    return sum(len(layers) for *_, layers in _walk(model, targets, params))


def add_logra(model, targets, params: str, k_in: int, k_out: int, seed: int) -> None:
    """Attach a tap (in place) to every targeted matrix: LoRA A and B (`params="lora"`, adapters
    must be attached) or the base weights (`params="linear"`)."""
    if k_in < 1 or k_out < 1:
        raise ValueError(f"tap dimensions must be >= 1, got k_in={k_in}, k_out={k_out}")
    stacked = is_stacked(model)
    for name, part, module, attr, n_in, layers in list(_walk(model, targets, params)):
        var = getattr(module, attr)
        _, shape = split_layer_shape(var.shape, stacked)
        axes = tuple(var.get_metadata()["logical_axes"])
        in_shape, out_shape = shape[:n_in], shape[n_in:]
        p_in = jnp.stack([factor(seed, f"{name}.{part}.in", li, k_in, in_shape) for li in layers])
        p_out = jnp.stack([factor(seed, f"{name}.{part}.out", li, k_out, out_shape) for li in layers])
        if not stacked:
            p_in, p_out = p_in[0], p_out[0]
        setattr(module, f"{attr}_logra", Tap(p_in, p_out, axes[:n_in], axes[n_in:]))


def taps(model, targets, params: str) -> list[tuple[Tap, nnx.Variable]]:
    """(tap, the matrix it projects) pairs in feature order (see `_walk`)."""
    return [(getattr(module, f"{attr}_logra"), getattr(module, attr))
            for _, _, module, attr, _, _ in _walk(model, targets, params)]
