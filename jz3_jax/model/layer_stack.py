"""The decoder's two layer-stack layouts, handled in one place.

- stacked (`cfg.scan_layers`): `model.layers` is one `DecoderLayer` whose arrays carry a leading
  [num_layers] axis; in the flat state, layer i's parameter `path` is slice i of `("layers", *path)`.
- listed: `model.layers` is a list of `DecoderLayer`s; layer i's parameter is `("layers", i, *path)`.

Checkpoint names, filling a model from named tensors, export, LoRA and converting a model between
the layouts (`convert_flat_state`, which `model.factory.restack` applies to a model) all go
through these functions; the decoder's choice of `jax.lax.scan` over the stack
is the only other place that tells the layouts apart.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

LAYERS = "layers"  # the decoder attribute (and flat-state prefix) that holds the layer stack


def is_stacked(model_or_cfg: Any) -> bool:
    """Whether a model (or a ModelConfig) keeps its layers stacked on a leading axis."""
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    return bool(cfg.scan_layers)


def param_key(path: tuple, layer: int | None, stacked: bool) -> tuple:
    """The flat-state key of the array holding layer `layer`'s parameter `path` (`layer=None`: a
    parameter outside the layer stack, whose key is `path` itself)."""
    if layer is None:
        return tuple(path)
    return (LAYERS,) + tuple(path) if stacked else (LAYERS, layer) + tuple(path)


def param_index(layer: int | None, stacked: bool) -> tuple[int, ...]:
    """The leading indices of layer `layer`'s slice inside the array at `param_key(...)`."""
    return (layer,) if stacked and layer is not None else ()


def layer_param(flat: dict, path: tuple, layer: int | None, stacked: bool):
    """Layer `layer`'s parameter `path` (one layer's array) from a flat state `{key: Variable}`."""
    array = flat[param_key(path, layer, stacked)].get_value()
    index = param_index(layer, stacked)
    return array[index] if index else array


def layer_modules(model: Any) -> list:
    """The modules to visit once each to reach every layer: the one stacked `DecoderLayer`, or
    each listed layer in order."""
    layers = getattr(model, LAYERS)
    return [layers] if is_stacked(model) else list(layers)


def split_layer_shape(shape: Sequence[int], stacked: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(leading layer axis, one layer's shape) of a layer parameter of `shape` as stored."""
    shape = tuple(shape)
    return (shape[:1], shape[1:]) if stacked else ((), shape)


def per_layer(fn: Callable, stacked: bool) -> Callable:
    """`fn` (written for one layer's arrays) applied to arrays as stored: mapped over the layer
    axis when stacked."""
    return jax.vmap(fn) if stacked else fn


def _same(array: jax.Array) -> jax.Array:
    return array


def _stack(*arrays: jax.Array) -> jax.Array:
    return jnp.stack(arrays)


def _one_layer(array: jax.Array, layer: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(array, layer, keepdims=False)  # traced: one compile per shape


def convert_flat_state(source: dict, target: dict, target_shardings: dict, num_layers: int,
                       source_stacked: bool) -> None:
    """Fill the flat state `target` (Variables of the other layout) in place from `source`,
    placing each array on its sharding in `target_shardings`. The values are copied exactly."""
    for key, var in target.items():
        sharding = target_shardings[key].get_value()
        if key[0] != LAYERS:
            value = jax.jit(_same, out_shardings=sharding)(source[key].get_value())
        elif source_stacked:  # target listed: ("layers", i, *path) is slice i
            layer, path = key[1], key[2:]
            value = jax.jit(_one_layer, out_shardings=sharding)(source[(LAYERS,) + path].get_value(),
                                                                jnp.int32(layer))
        else:  # target stacked: ("layers", *path) stacks every listed layer's array
            path = key[1:]
            value = jax.jit(_stack, out_shardings=sharding)(
                *[source[(LAYERS, i) + path].get_value() for i in range(num_layers)])
        var.set_value(value)
