"""The decoder-only transformer (Llama / Mistral / Qwen2 / DeepSeek-Math layout, Mixtral MoE) in Flax NNX.

`Decoder(tokens, positions, segment_ids, cache=None)` returns logits and the updated cache
(`return_aux=True` adds the mixture-of-experts router statistics, summed over layers: `MoEStats`).
With `scan_layers`, the layers' parameters are stacked on a leading "layers" axis and the layer
stack runs under `jax.lax.scan` (one compiled layer, fast compiles for deep models); otherwise
each layer has its own arrays and its own KV-cache buffer (faster decode: stacking costs copies).

Variants are arguments, never module globals: the training attention kernel is `cfg.attention`
and the decode step's attention layout is the `decode_attention` constructor argument (a key of
`attention.DECODE_LAYOUTS`), part of the static graph; `with_decode_attention` gives a copy of a
built model (sharing its arrays) with another layout.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jz3_jax.model.attention import DEFAULT_DECODE_LAYOUT, KVCache, check_decode_layout, write_slot_info
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.layers import DecoderLayer, RMSNorm
from jz3_jax.model.params import constrain, dtype_of, param
from jz3_jax.model.moe import MoEStats
from jz3_jax.model.paged_attention import PAGED_IMPLS, PagedKVCache, PagedSlots
from jz3_jax.model.rope import inverse_frequencies, rope_tables
from jz3_jax.runtime.sharding import parse_rules

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rules_tuple(rules: dict[str, tuple[str, ...]] | Sequence[str] | None) -> tuple:
    """A hashable form of the rules table, kept as static model data."""
    if rules is None:
        return ()
    if not isinstance(rules, dict):
        rules = parse_rules(rules)
    return tuple(sorted(rules.items()))


class Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, rules=None,
                 decode_attention: str = DEFAULT_DECODE_LAYOUT):
        if cfg.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {cfg.remat!r}")
        self.cfg = cfg
        self.rules = rules_tuple(rules)
        self.decode_attention = check_decode_layout(decode_attention)
        self.paged_attention = "gather"  # the paged decode step's impl (`paged_attention.PAGED_IMPLS`)
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=0, out_axes=0)
            def make_stack(rngs: nnx.Rngs) -> DecoderLayer:
                return DecoderLayer(cfg, rngs=rngs)

            self.layers = make_stack(rngs)
        else:
            self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg)

    def _layer_fn(self, graphdef):
        """A pure function (layer state, carry, kv) -> (carry, new kv, MoE stats or None),
        rematerialised if configured."""
        rules, decode_attention, paged = self.rules, self.decode_attention, self.paged_attention

        def apply(state, x, cos, sin, segment_ids, positions, kv, slots, key):
            layer = nnx.merge(graphdef, state)
            return layer(x, cos, sin, segment_ids, positions, rules, kv, slots, key, decode_attention, paged)

        policy = REMAT_POLICIES[self.cfg.remat]
        if self.cfg.remat != "none":
            return jax.checkpoint(apply, policy=policy)
        return apply

    def hidden_states(self, tokens, positions, segment_ids, cache: KVCache | PagedKVCache | None = None,
                      dropout_key=None, return_aux: bool = False):
        """Final-norm hidden states [batch, length, hidden] and the updated cache (and, with
        `return_aux`, the `MoEStats` summed over layers; zeros for a dense model).

        A `PagedKVCache` takes each row's new tokens (right-padded, segment 0 = padding) at
        `positions`, which must continue the row: its `lengths` .. `lengths` + real tokens - 1.

        `dropout_key` turns on LoRA dropout (training only); None is deterministic."""
        cfg = self.cfg
        x = jnp.take(self.embed[...], tokens, axis=0).astype(dtype_of(cfg.dtype))
        x = constrain(x, ("batch", "length", "embed"), self.rules)
        cos, sin = rope_tables(jnp.asarray(inverse_frequencies(cfg)), positions)
        slots = None
        if isinstance(cache, PagedKVCache):
            new_cache = cache._replace(lengths=cache.lengths + (segment_ids != 0).sum(axis=1).astype(jnp.int32))
            slots = PagedSlots(cache.page_table, new_cache.lengths)
        elif cache is not None:
            new_cache = write_slot_info(cache, segment_ids, positions)
            slots = (cache.index, new_cache.valid, new_cache.pos)
        aux = MoEStats.zeros(max(cfg.num_experts, 1))
        if cfg.scan_layers:
            graphdef, state = nnx.split(self.layers)
            apply = self._layer_fn(graphdef)

            if isinstance(cache, PagedKVCache):
                # One pool for all layers, carried and written in place (see `paged_attention.py`).
                pages_per_layer = cache.k.shape[1] // cfg.num_layers

                def body(carry, xs):
                    layer_state, index = xs
                    x, acc, kv = carry
                    layer_slots = slots._replace(first_page=index * pages_per_layer)
                    key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
                    x, kv, stats = apply(layer_state, x, cos, sin, segment_ids, positions, kv, layer_slots, key)
                    return (x, acc if stats is None else acc + stats, kv), None

                (x, aux, new_kvs), _ = jax.lax.scan(body, (x, aux, (cache.k, cache.v)),
                                                    (state, jnp.arange(cfg.num_layers)))
            else:
                def body(carry, xs):
                    layer_state, kv, index = xs
                    key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
                    x, acc = carry
                    x, new_kv, stats = apply(layer_state, x, cos, sin, segment_ids, positions, kv, slots, key)
                    return (x, acc if stats is None else acc + stats), new_kv

                kvs = None if cache is None else (cache.k, cache.v)
                (x, aux), new_kvs = jax.lax.scan(body, (x, aux), (state, kvs, jnp.arange(cfg.num_layers)))
        else:
            new_k, new_v = [], []
            for i, layer in enumerate(self.layers):
                graphdef, state = nnx.split(layer)
                kv = None if cache is None else (cache.k[i], cache.v[i])
                key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
                x, new_kv, stats = self._layer_fn(graphdef)(state, x, cos, sin, segment_ids, positions, kv, slots,
                                                            key)
                aux = aux if stats is None else aux + stats
                if cache is not None:
                    new_k.append(new_kv[0])
                    new_v.append(new_kv[1])
            new_kvs = None if cache is None else (tuple(new_k), tuple(new_v))
        if cache is not None:
            cache = new_cache._replace(k=new_kvs[0], v=new_kvs[1])
        if return_aux:
            return self.final_norm(x), cache, aux
        return self.final_norm(x), cache

    def with_decode_attention(self, layout: str, paged: str | None = None) -> "Decoder":
        """This model with decode attention layout `layout` (and paged decode impl `paged`, one of
        `PAGED_IMPLS`; None keeps this model's): a new Decoder over the same arrays (nothing is
        copied on device; this model is left unchanged)."""
        layout = check_decode_layout(layout)
        paged = self.paged_attention if paged is None else paged
        if paged not in PAGED_IMPLS:
            raise ValueError(f"paged attention impl must be one of {', '.join(PAGED_IMPLS)}; got {paged!r}")
        if layout == self.decode_attention and paged == self.paged_attention:
            return self
        variant = nnx.merge(*nnx.split(self))
        variant.decode_attention = layout
        variant.paged_attention = paged
        return variant

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Vocabulary logits (float32) from final hidden states (a 2-D dot: see MLP.__call__)."""
        dt = dtype_of(self.cfg.dtype)
        rows = hidden.reshape(-1, hidden.shape[-1])
        if self.cfg.tie_embeddings:
            out = jnp.einsum("ne,ve->nv", rows, self.embed[...].astype(dt), preferred_element_type=jnp.float32)
        else:
            out = jnp.dot(rows, self.lm_head[...].astype(dt), preferred_element_type=jnp.float32)
        out = out.reshape(*hidden.shape[:-1], -1)
        return constrain(out, ("batch", "length", "vocab"), self.rules)

    def __call__(self, tokens, positions=None, segment_ids=None, cache: KVCache | None = None, dropout_key=None,
                 return_aux: bool = False):
        """tokens [batch, length] -> (logits [batch, length, vocab] float32, cache[, MoEStats]).

        `positions` default to 0..length-1 and `segment_ids` to all ones (one sequence per row).
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens, dtype=jnp.int32)
        out = self.hidden_states(tokens, positions, segment_ids, cache, dropout_key, return_aux)
        return (self.logits(out[0]),) + tuple(out[1:])

    def init_cache(self, batch: int, slots: int, dtype=None) -> KVCache:
        """An empty KV cache for `batch` rows of `slots` tokens each (per-layer arrays unless the
        layers are scanned)."""
        cfg = self.cfg
        dtype = dtype or dtype_of(cfg.dtype)
        return KVCache.init(cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.resolved_head_dim, dtype,
                            stacked=cfg.scan_layers)

    def init_paged_cache(self, num_pages: int, page_size: int, rows: int, pages_per_row: int,
                         dtype=None) -> PagedKVCache:
        """An empty paged KV cache: `num_pages` pages of `page_size` tokens per layer (page 0 the
        scratch page) and an all-scratch page table of `pages_per_row` entries for each of `rows`."""
        cfg = self.cfg
        dtype = dtype or dtype_of(cfg.dtype)
        return PagedKVCache.init(cfg.num_layers, num_pages, page_size, cfg.num_kv_heads, cfg.resolved_head_dim,
                                 rows, pages_per_row, dtype, stacked=cfg.scan_layers)
