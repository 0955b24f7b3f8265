"""Masked grouped-query attention and the KV cache it reads and writes.

One mask rule covers training on packed rows and decoding: a query attends to a key when both
belong to the same segment (segment 0 is padding), the key's position is not after the query's,
and, with a sliding window W, the key is less than W positions back. In the KV cache, a key's
segment is 1 where the slot holds a real token and 0 otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class KVCache(NamedTuple):
    """Keys/values of every layer plus, per slot, whether it holds a token and that token's
    position; `index` is each row's next free slot.

    `k`/`v` are one array [layers, batch, slots, kv_heads, head_dim] when the layers are scanned
    (stacked parameters), else a tuple of per-layer arrays [batch, slots, kv_heads, head_dim]:
    decoding then updates each layer's buffer in place instead of restacking all layers per token.
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    valid: jax.Array  # [batch, slots] int32 (1 = real token)
    pos: jax.Array  # [batch, slots] int32
    index: jax.Array  # [batch] int32

    @classmethod
    def init(cls, num_layers: int, batch: int, slots: int, kv_heads: int, head_dim: int, dtype,
             stacked: bool = True) -> "KVCache":
        shape = (batch, slots, kv_heads, head_dim)
        if stacked:
            k = jnp.zeros((num_layers, *shape), dtype)
            v = jnp.zeros((num_layers, *shape), dtype)
        else:
            k = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
        return cls(
            k,
            v,
            jnp.zeros((batch, slots), jnp.int32),
            jnp.zeros((batch, slots), jnp.int32),
            jnp.zeros((batch,), jnp.int32),
        )


def _write_rows(buffer: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write `new` [batch, t, ...] into `buffer` [batch, slots, ...] at each row's own `start`."""

    def one(buf, chunk, s):
        return jax.lax.dynamic_update_slice_in_dim(buf, chunk.astype(buf.dtype), s, axis=0)

    return jax.vmap(one)(buffer, new, start)


def write_kv(k_layer: jax.Array, v_layer: jax.Array, k: jax.Array, v: jax.Array, start: jax.Array):
    """One layer's cache after writing the new keys/values at each row's `start` slot."""
    return _write_rows(k_layer, k, start), _write_rows(v_layer, v, start)


def write_slot_info(cache: KVCache, segment_ids: jax.Array, positions: jax.Array) -> KVCache:
    """Record validity/positions of the new tokens and advance each row by its real-token count.

    New tokens must be right-padded within the chunk: padding slots are written as invalid and
    the next write of that row starts over them.
    """
    real = (segment_ids != 0).astype(jnp.int32)
    valid = _write_rows(cache.valid, real, cache.index)
    pos = _write_rows(cache.pos, positions.astype(jnp.int32), cache.index)
    return cache._replace(valid=valid, pos=pos, index=cache.index + real.sum(axis=1))


def attention_mask(q_seg, k_seg, q_pos, k_pos, sliding_window: int) -> jax.Array:
    """Boolean [batch, q_len, k_len] mask (see the module docstring)."""
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = same & (delta >= 0)
    if sliding_window > 0:
        mask &= delta < sliding_window
    return mask


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [b, t, heads, d], k/v [b, s, kv_heads, d], mask [b, t, s] -> [b, kv_heads, group, t, d].

    Query heads are grouped by the kv head they share (head h uses kv head h // group, as in
    transformers): one batched matmul per kv head covers its whole group, which XLA:CPU runs
    much faster than a 5-D einsum over [b, t, kv, group, d]. The output stays in that grouped
    layout (head h = kv * group + g); the caller flattens it. Softmax runs in float32; fully
    masked rows (padding queries) get a uniform distribution, not NaN.
    """
    b, t, heads, d = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    q = q.reshape(b, t, kv_heads, group, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, group * t, d)
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    scores = scores.reshape(b, kv_heads, group, t, -1)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv_heads, group * t, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, kv_heads, group, t, d)


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`dot_product_attention` for one query per row (t = 1) over a KV cache, same inputs and output.

    The cache is read in its own [b, slots, kv_heads, d] layout: grouping the heads needs the kv
    axis next to the batch axis, and that transposed copy of every layer's cache, each token, cost
    more than the attention itself. Here each row's query heads are spread over a block-diagonal
    [heads, kv_heads * d] matrix (head h in block h // group, zeros elsewhere), so one batched
    matmul per row against the cache seen as [slots, kv_heads * d] gives every head's scores; the
    zero blocks add exact zeros (3x the few attention flops, no copy of the cache).

    With a single row, XLA writes the cache with a dynamic-update-slice that it then fuses into both
    this matmul (through the [slots, kv_heads * d] reshape) and the updated cache, copying the cache
    four times per layer; the transposed copy of `dot_product_attention` is cheaper there.
    """
    b, t, heads, d = q.shape
    if b == 1:
        return dot_product_attention(q, k, v, mask)
    kv_heads = k.shape[2]
    group = heads // kv_heads
    eye = jnp.eye(kv_heads, dtype=q.dtype)
    q_blocks = jnp.einsum("bkgd,kj->bkgjd", q.reshape(b, kv_heads, group, d), eye).reshape(b, heads, kv_heads * d)
    scores = jnp.einsum("bhc,bsc->bhs", q_blocks, k.reshape(b, -1, kv_heads * d),
                        preferred_element_type=jnp.float32) * (d**-0.5)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)  # mask [b, 1, slots]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    every = jnp.einsum("bhs,bsc->bhc", probs, v.reshape(b, -1, kv_heads * d))  # head h against every kv head
    out = jnp.einsum("bkgjd,kj->bkgd", every.reshape(b, kv_heads, group, kv_heads, d), eye)  # keep its own
    return out.reshape(b, kv_heads, group, t, d)


def grouped_decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention of one query per row: q [b, 1, heads, d], k/v [b, slots, kv_heads, d],
    mask [b, 1, slots] -> [b, kv_heads, group, 1, d] (the layout `dot_product_attention` returns).

    The grouped contraction itself (query head h against kv head h // group) written on the cache's
    own layout: only the FLOPs attention needs. Softmax runs in float32; fully masked rows get a
    uniform distribution, not NaN."""
    b, t, heads, d = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    q = q.reshape(b, t, kv_heads, group, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->bkgtd", probs, v)


# The decode step's attention layouts (one query per row over the cache), by name: the model's
# `decode_attention` argument picks one; `jz3_jax.decoding.attention` compares them.
DECODE_LAYOUTS = {"block_diagonal": decode_attention, "grouped": grouped_decode_attention}
DEFAULT_DECODE_LAYOUT = "block_diagonal"


def check_decode_layout(layout: str) -> str:
    """`layout` if it names a decode attention layout (a key of DECODE_LAYOUTS), else ValueError."""
    if layout not in DECODE_LAYOUTS:
        raise ValueError(f"decode attention layout must be one of {', '.join(DECODE_LAYOUTS)}; got {layout!r}")
    return layout
