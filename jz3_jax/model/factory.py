"""Create a decoder: abstract (shapes only), or randomly initialised straight into its shardings."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from jz3_jax.model.attention import DEFAULT_DECODE_LAYOUT
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.decoder import Decoder
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
