"""Create a decoder: abstract (shapes only), randomly initialised straight into its shardings, or
converted from another layer-stack layout (`restack`)."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx
from jax.sharding import Mesh

from jz3_jax.model.attention import DEFAULT_DECODE_LAYOUT
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.decoder import Decoder
from jz3_jax.model.layer_stack import convert_flat_state, is_stacked
from jz3_jax.runtime.sharding import Rules, state_shardings


def abstract_model(cfg: ModelConfig, rules: Rules | None = None, decode_attention: str = DEFAULT_DECODE_LAYOUT
                   ) -> Decoder:
    """A Decoder whose arrays are ShapeDtypeStructs (no memory used)."""
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), rules=rules, decode_attention=decode_attention))


def model_shardings(model: Decoder, rules: Rules, mesh: Mesh):
    """(graphdef, abstract state, NamedSharding state) of a (possibly abstract) model."""
    graphdef, state = nnx.split(model)
    return graphdef, state, state_shardings(state, rules, mesh)


def init_model(cfg: ModelConfig, mesh: Mesh, rules: Rules, seed: int = 0) -> Decoder:
    """A randomly initialised Decoder, each parameter created directly in its sharding."""
    graphdef, _, shardings = model_shardings(abstract_model(cfg, rules), rules, mesh)

    @jax.jit
    def init():
        return nnx.split(Decoder(cfg, rngs=nnx.Rngs(seed), rules=rules))[1]

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def restack(model: Decoder, stacked: bool, mesh: Mesh, rules: Rules) -> Decoder:
    """`model` with its layers stacked (`stacked=True`, the `scan_layers` layout) or listed, on
    `mesh` with `rules`: the same values, converted on device with no host copy (the same model
    if it already has that layout)."""
    if is_stacked(model) == stacked:
        return model
    cfg = dataclasses.replace(model.cfg, scan_layers=stacked)
    graphdef, abstract_state, shardings = model_shardings(
        abstract_model(cfg, rules, decode_attention=model.decode_attention), rules, mesh)
    source = dict(nnx.to_flat_state(nnx.state(model)))
    if jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param))):
        raise ValueError("restack converts the parameters of a model without LoRA adapters (merge_lora first)")
    target = dict(nnx.to_flat_state(abstract_state))
    convert_flat_state(source, target, dict(nnx.to_flat_state(shardings)), cfg.num_layers, source_stacked=not stacked)
    return nnx.merge(graphdef, nnx.from_flat_state(target))
