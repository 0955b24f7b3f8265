"""Stream named HF tensors straight into a sharded model, one tensor at a time.

Each tensor is checked (known name, expected shape), converted to our layout and dtype, and
placed on its sharding with `make_array_from_callback`, so a process only transfers its own
shards and host memory holds one tensor at a time, never a second copy of the model.
"""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jz3_jax.checkpoint.errors import CheckpointError
from jz3_jax.checkpoint.hf_names import IGNORED, expected_hf_names, hf_shape, locate
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.decoder import Decoder
from jz3_jax.model.factory import abstract_model, model_shardings
from jz3_jax.model.layer_stack import is_stacked, param_index, param_key
from jz3_jax.runtime.sharding import Rules


def _zeros(abstract, sharding) -> jax.Array:
    return jax.jit(lambda: jnp.zeros(abstract.shape, abstract.dtype), out_shardings=sharding)()


@functools.partial(jax.jit, donate_argnums=0)
def _set_slice(buffer: jax.Array, value: jax.Array, index: jax.Array) -> jax.Array:
    """Write `value` at the leading indices `index` (layer, and/or expert) of a stacked parameter
    in place (the indices are traced: one compile per parameter shape, not per layer). The output
    keeps the buffer's sharding."""
    lead = index.shape[0]
    start = tuple(index) + (0,) * value.ndim
    return jax.lax.dynamic_update_slice(buffer, value.astype(buffer.dtype)[(None,) * lead], start)


def load_tensors(cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray, str]], mesh: Mesh, rules: Rules) -> Decoder:
    """Build a Decoder of architecture `cfg` from an iterator of (HF name, array, source file)."""
    graphdef, abstract_state, shardings = model_shardings(abstract_model(cfg, rules), rules, mesh)
    flat_abstract = dict(nnx.to_flat_state(abstract_state))
    flat_shardings = dict(nnx.to_flat_state(shardings))
    dtype = jnp.dtype(cfg.param_dtype)
    expected = set(expected_hf_names(cfg))
    values: dict[tuple, jax.Array] = {}
    seen: set[str] = set()
    for name, array, source in tensors:
        if IGNORED.match(name):
            continue
        located = locate(name)
        if located is None or name not in expected:
            raise CheckpointError(f"{source}: tensor {name!r} is not part of a {cfg.family} model with this config")
        if tuple(array.shape) != hf_shape(name, cfg):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(array.shape)}, the config expects {hf_shape(name, cfg)}"
            )
        path, layer, expert, to_ours = located
        key = param_key(path, layer, is_stacked(cfg))
        value = np.asarray(to_ours(array, cfg)).astype(dtype)
        sharding = flat_shardings[key].get_value()
        index = list(param_index(layer, is_stacked(cfg))) + ([] if expert is None else [expert])
        if index:  # one slice of a stacked parameter (scanned layers, Mixtral experts)
            if key not in values:
                values[key] = _zeros(flat_abstract[key].get_value(), sharding)
            values[key] = _set_slice(values[key], value, np.asarray(index, np.int32))
        else:
            values[key] = jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
        seen.add(name)
    missing = sorted(expected - seen)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"checkpoint is missing tensors: {', '.join(missing[:3])}{more}")
    for key, var in flat_abstract.items():
        var.set_value(values[key])
    return nnx.merge(graphdef, nnx.from_flat_state(flat_abstract))
