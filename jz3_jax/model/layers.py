"""Building blocks of the decoder: RMSNorm, SwiGLU MLP, attention, one decoder layer.

Every parameter carries `logical_axes` metadata (names from the `mesh.rules` table); activations
are constrained by logical names through `constrain`, which is a no-op without a mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jz3_jax.model.attention import DECODE_LAYOUTS, DEFAULT_DECODE_LAYOUT, attention_mask, dot_product_attention, write_kv
from jz3_jax.model.attention_kernels import check_attention_kind, fused_attention
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.logra import tap
from jz3_jax.model.lora import TARGETS, adapter
from jz3_jax.model.moe import MoE
from jz3_jax.model.paged_attention import PagedSlots, paged_decode_attention, paged_prefill_attention, write_pages
from jz3_jax.model.params import constrain, dtype_of, param
from jz3_jax.model.rope import apply_rope


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.weight = param(rngs, (dim,), ("norm",), cfg, nnx.initializers.ones)
        self.eps = cfg.rms_norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


def _subkey(key, name: str):
    """A distinct dropout key per adapted weight (None stays None: no dropout)."""
    return None if key is None else jax.random.fold_in(key, TARGETS.index(name))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate = param(rngs, (e, m), ("embed", "mlp"), cfg)
        self.up = param(rngs, (e, m), ("embed", "mlp"), cfg)
        self.down = param(rngs, (m, e), ("mlp", "embed"), cfg)
        self.dtype = dtype_of(cfg.dtype)

    def _matmul(self, x: jax.Array, name: str, key) -> jax.Array:
        out = x @ getattr(self, name)[...].astype(self.dtype)
        lora = adapter(self, name)
        if lora is not None:
            out = out + lora(x, 1, _subkey(key, name))
        if tap(self, name) is not None:
            out = out + tap(self, name)(x, 1)
        return out

    def __call__(self, x: jax.Array, rules: tuple, dropout_key=None) -> jax.Array:
        # Rows flattened to 2-D: XLA:CPU's backward of 3-D dots was ~50% slower than the same 2-D dots.
        rows = x.reshape(-1, x.shape[-1])
        gate = self._matmul(rows, "gate", dropout_key)
        up = self._matmul(rows, "up", dropout_key)
        hidden = jax.nn.silu(gate) * up
        hidden = constrain(hidden.reshape(*x.shape[:-1], -1), ("batch", "length", "mlp"), rules)
        return self._matmul(hidden.reshape(rows.shape[0], -1), "down", dropout_key).reshape(x.shape)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, h, kvh, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        self.q = param(rngs, (e, h, d), ("embed", "heads", "head_dim"), cfg)
        self.k = param(rngs, (e, kvh, d), ("embed", "kv_heads", "head_dim"), cfg)
        self.v = param(rngs, (e, kvh, d), ("embed", "kv_heads", "head_dim"), cfg)
        self.o = param(rngs, (h, d, e), ("heads", "head_dim", "embed"), cfg)
        if cfg.qkv_bias:
            zeros = nnx.initializers.zeros
            self.q_bias = param(rngs, (h, d), ("heads", "head_dim"), cfg, zeros)
            self.k_bias = param(rngs, (kvh, d), ("kv_heads", "head_dim"), cfg, zeros)
            self.v_bias = param(rngs, (kvh, d), ("kv_heads", "head_dim"), cfg, zeros)
        self.qkv_bias = cfg.qkv_bias
        self.sliding_window = cfg.sliding_window
        self.attention = check_attention_kind(cfg.attention)
        self.dtype = dtype_of(cfg.dtype)

    def _project(self, rows: jax.Array, name: str, key) -> jax.Array:
        """rows [n, embed] -> [n, heads, head_dim] (2-D dots: see MLP.__call__)."""
        weight = getattr(self, name)[...].astype(self.dtype)
        out = (rows @ weight.reshape(weight.shape[0], -1)).reshape(rows.shape[0], *weight.shape[1:])
        lora = adapter(self, name)
        if lora is not None:
            out = out + lora(rows, 1, _subkey(key, name))
        if tap(self, name) is not None:
            out = out + tap(self, name)(rows, 1).reshape(out.shape)
        if self.qkv_bias:
            out = out + getattr(self, f"{name}_bias")[...].astype(self.dtype)
        return out

    def __call__(self, x, cos, sin, segment_ids, positions, rules, kv=None, cache_slots=None, dropout_key=None,
                 decode_attention: str = DEFAULT_DECODE_LAYOUT, paged_attention: str = "gather"):
        """Self-attention over `x`; with `kv=(k_cache, v_cache)` the new keys are written at
        slot `start` of each row and attention runs over the whole cache, whose per-slot
        validity and positions (already including the new tokens) are `cache_slots =
        (start, valid, pos)`. A decode step (one new token over a cache) attends with the layout
        `decode_attention` names (a key of `DECODE_LAYOUTS`); training attention is
        `cfg.attention`, fixed at construction. With `cache_slots` a `PagedSlots`, `kv` are page
        pools (`paged_attention.py`): a decode step reads them with the `paged_attention` impl,
        a longer chunk with the gather path. Returns (out, new kv or None)."""
        b, t, e = x.shape
        rows = x.reshape(b * t, e)
        q = apply_rope(self._project(rows, "q", dropout_key).reshape(b, t, *self.q.shape[1:]), cos, sin)
        k = apply_rope(self._project(rows, "k", dropout_key).reshape(b, t, *self.k.shape[1:]), cos, sin)
        v = self._project(rows, "v", dropout_key).reshape(b, t, *self.v.shape[1:])
        q = constrain(q, ("batch", "length", "heads", "head_dim"), rules)
        out = None
        if kv is None:
            out = fused_attention(self.attention, q, k, v, segment_ids, self.sliding_window, rules)
            if out is None:
                mask = attention_mask(segment_ids, segment_ids, positions, positions, self.sliding_window)
            new_kv = None
        elif isinstance(cache_slots, PagedSlots):
            new_kv = write_pages(kv[0], kv[1], k, v, positions, segment_ids, cache_slots.page_table,
                                 cache_slots.first_page)
            table = cache_slots.layer_table()
            if t == 1:
                scaled = (q[:, 0] * q.shape[-1] ** -0.5).astype(self.dtype)
                out = paged_decode_attention(scaled, *new_kv, cache_slots.lengths, table,
                                             impl=paged_attention, sliding_window=self.sliding_window)
                out = out.reshape(b, new_kv[0].shape[0], -1, 1, out.shape[-1])
            else:
                out = paged_prefill_attention(q, *new_kv, positions, cache_slots.lengths, table,
                                              self.sliding_window)
            out = out.astype(self.dtype)
        else:
            start, valid, slot_pos = cache_slots
            new_kv = write_kv(kv[0], kv[1], k, v, start)
            k, v = new_kv
            mask = attention_mask(jnp.ones_like(segment_ids), valid, positions, slot_pos, self.sliding_window)
        if out is None:
            attend = DECODE_LAYOUTS[decode_attention] if kv is not None and t == 1 else dot_product_attention
            out = attend(q, k.astype(self.dtype), v.astype(self.dtype), mask)
        heads_out = out.transpose(0, 3, 1, 2, 4).reshape(b * t, -1)  # [rows, heads * head_dim]
        o = self.o[...].astype(self.dtype)
        projected = heads_out @ o.reshape(-1, o.shape[-1])
        lora = adapter(self, "o")
        if lora is not None:
            heads = heads_out.reshape(b * t, *o.shape[:2])
            projected = projected + lora(heads, 2, _subkey(dropout_key, "o"))
        if tap(self, "o") is not None:
            projected = projected + tap(self, "o")(heads_out.reshape(b * t, *o.shape[:2]), 2)
        return projected.reshape(b, t, e), new_kv


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg, rngs=rngs)
        if cfg.is_moe:
            self.moe = MoE(cfg, rngs=rngs)
        else:
            self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids, positions, rules, kv=None, cache_slots=None, dropout_key=None,
                 decode_attention: str = DEFAULT_DECODE_LAYOUT, paged_attention: str = "gather"):
        """Returns (x, new kv or None, this layer's MoEStats or None for a dense MLP)."""
        attn_out, new_kv = self.attn(self.input_norm(x), cos, sin, segment_ids, positions, rules, kv, cache_slots,
                                     dropout_key, decode_attention, paged_attention)
        x = constrain(x + attn_out, ("batch", "length", "embed"), rules)
        if hasattr(self, "moe"):
            mlp_out, stats = self.moe(self.post_attn_norm(x), segment_ids, rules)
        else:
            mlp_out, stats = self.mlp(self.post_attn_norm(x), rules, dropout_key), None
        x = x + mlp_out
        return constrain(x, ("batch", "length", "embed"), rules), new_kv, stats
