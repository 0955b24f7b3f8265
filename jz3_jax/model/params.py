"""Parameters and sharding constraints shared by the model's modules (layers, MoE, decoder)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.sharding import logical_to_spec


def dtype_of(name: str):
    """`"bfloat16"` -> jnp.bfloat16, etc."""
    return jnp.dtype(name)


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple, cfg: ModelConfig, init=None) -> nnx.Param:
    init = init or nnx.initializers.normal(stddev=0.02)
    return nnx.Param(init(rngs.params(), shape, dtype_of(cfg.param_dtype)), logical_axes=axes)


def constrain(x: jax.Array, names: tuple, rules: tuple) -> jax.Array:
    """Sharding constraint by logical names under the mesh set with `jax.set_mesh` (else no-op)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not rules:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, dict(rules), mesh, x.shape))
