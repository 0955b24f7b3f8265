"""The decode programs `compile.program=decode` compiles for a TPU host: the engine's decode dispatch
over a contiguous KV cache, and over a paged one. Shapes only: nothing is allocated, no weights read."""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any

from jz3_jax.train.compile_analysis import tree_bytes_per_device

if TYPE_CHECKING:
    from jz3_jax.train.spec import CompileSpec


@dataclasses.dataclass(frozen=True)
class DecodeSetup:
    """The engine's mesh over one host's compile-only devices, and the abstract sharded model on it."""

    mesh: Any
    rules: dict
    model_cfg: Any
    layout: str  # the decode attention layout (`engine.decode_attention` resolved)
    graphdef: Any
    abstract: Any
    shardings: Any
    params: Any  # ShapeDtypeStructs with their shardings
    options: dict  # steps.decode's static options (steps, eos_ids, max_top_k)

    @classmethod
    def build(cls, cfg: CompileSpec, devices: list) -> "DecodeSetup":
        import jax
        from flax import nnx

        from jz3_jax.checkpoint import resolve_model_config
        from jz3_jax.decoding import steps
        from jz3_jax.decoding.attention import resolve_layout
        from jz3_jax.model.factory import abstract_model
        from jz3_jax.runtime.mesh import build_mesh
        from jz3_jax.runtime.sharding import parse_rules, state_shardings

        e = cfg.engine
        mesh = build_mesh(e.mesh, devices=devices)
        rules = parse_rules(e.mesh.rules)
        model_cfg = resolve_model_config(cfg.model)
        layout = resolve_layout(e.decode_attention)
        graphdef, abstract = nnx.split(abstract_model(model_cfg, rules, decode_attention=layout))
        shardings = state_shardings(abstract, rules, mesh)
        params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
        options = {"steps": e.steps_per_dispatch, "eos_ids": (model_cfg.eos_token_id,)}
        if "max_top_k" in inspect.signature(steps.decode).parameters and hasattr(e, "max_top_k"):
            options["max_top_k"] = min(e.max_top_k, model_cfg.vocab_size)
        return cls(mesh, rules, model_cfg, layout, graphdef, abstract, shardings, params, options)

    @property
    def row_shards(self) -> int:
        """How many ways the mesh splits rows (the rules' `batch` axes): row counts are multiples of it."""
        from jz3_jax.decoding.buckets import row_shards

        return row_shards(self.mesh, self.rules)


def _keep(setup: DecodeSetup, rows: int):
    import jax

    return jax.ShapeDtypeStruct((rows,), jax.numpy.bool_,
                                sharding=jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec()))


def compile_contiguous(setup: DecodeSetup, rows: int, length: int) -> tuple[Any, int]:
    """The engine's decode dispatch over a contiguous cache of `rows` x `length`: (compiled, cache bytes per chip)."""
    import jax

    from jz3_jax.decoding import steps

    with jax.set_mesh(setup.mesh):
        init = steps.init_state.lower(setup.graphdef, setup.params, slots=rows, length=length).compile()
        shapes = jax.eval_shape(lambda p: steps.init_state(setup.graphdef, p, rows, length), setup.params)
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                             init.output_shardings)
        lowered = steps.decode.lower(setup.graphdef, setup.params, state, _keep(setup, rows), **setup.options)
    return lowered.compile(), tree_bytes_per_device((state.cache.k, state.cache.v))


def compile_paged(setup: DecodeSetup, rows: int, num_pages: int, page_size: int, pages_per_row: int,
                  impl: str) -> tuple[Any, int]:
    """The paged engine's decode dispatch (`paged_steps.decode_rows` over all `rows` rows, the
    engine's largest row bucket) for rows of up to `pages_per_row` pages over a pool of `num_pages`
    pages of `page_size` tokens per layer, decode attention by `impl` ("pallas" or "gather"):
    (compiled, cache bytes per chip)."""
    import jax
    from flax import nnx

    from jz3_jax.decoding import paged_steps
    from jz3_jax.model.factory import abstract_model

    model = abstract_model(setup.model_cfg, setup.rules, decode_attention=setup.layout)
    graphdef = nnx.graphdef(model.with_decode_attention(setup.layout, impl))
    shape = dict(slots=rows, num_pages=num_pages, page_size=page_size, pages_per_row=pages_per_row)
    with jax.set_mesh(setup.mesh):
        init = paged_steps.init_state.lower(graphdef, setup.params, **shape).compile()
        shapes = jax.eval_shape(lambda p: paged_steps.init_state(graphdef, p, *shape.values()), setup.params)
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                             init.output_shardings)
        slots = jax.ShapeDtypeStruct((rows,), jax.numpy.int32, sharding=state.cache.lengths.sharding)
        lowered = paged_steps.decode_rows.lower(graphdef, setup.params, state, slots, state.cache.page_table,
                                                _keep(setup, rows), **setup.options)
    return lowered.compile(), tree_bytes_per_device((state.cache.k, state.cache.v))
