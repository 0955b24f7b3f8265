"""The decode step's attention layout (one query per row over the KV cache), chosen per backend.

Two layouts compute the same attention for a decode step (`t = 1`):

- `block_diagonal` (the model's `decode_attention`): each row's query heads are spread over a
  block-diagonal [heads, kv_heads * head_dim] matrix, so one plain batched matmul per row reads
  the cache in its own [rows, slots, kv_heads, head_dim] layout, with no transposed copy of the
  cache; but the zero blocks multiply too: `kv_heads` times the attention FLOPs (8x on Mistral and
  Llama-3), and XLA:CPU (jax 0.10) runs these batched matmuls with its slow elemental loop.
- `grouped`: the grouped-query contraction itself, query head h against kv head h // group,
  written as einsums on the cache's own layout; it does only the FLOPs attention needs. GPU and
  TPU compilers lay it out without a copy; XLA:CPU copies each layer's cache into a transposed
  layout per token, and is still faster than `block_diagonal`: SmolLM2-135M, 16 rows, 67 vs 84 ms
  per decode step (64 rows: 33 vs 41 s per 128 tokens; 1 row: the same within noise).

`engine.decode_attention = auto` takes `grouped` on every backend; `block_diagonal` stays for
comparison and for CPUs where it wins.

The model chooses its decode attention in `jz3_jax.model.layers` (the `decode_attention` it
imported); `use_layout` swaps that choice while a decode program is traced, so the model's code
is unchanged and every other program (training, prefill) keeps its own attention.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from jz3_jax.model import attention as model_attention

LAYOUTS = ("auto", "block_diagonal", "grouped")
_SWAP = threading.RLock()  # one decode trace at a time swaps the model's function


def grouped_decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention of one query per row: q [b, 1, heads, d], k/v [b, slots, kv_heads, d],
    mask [b, 1, slots] -> [b, kv_heads, group, 1, d] (the layout `dot_product_attention` returns).

    Softmax runs in float32; fully masked rows get a uniform distribution, not NaN."""
    b, t, heads, d = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    q = q.reshape(b, t, kv_heads, group, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->bkgtd", probs, v)


_FUNCTIONS: dict[str, Callable] = {
    "block_diagonal": model_attention.decode_attention,
    "grouped": grouped_decode_attention,
}


def resolve_layout(layout: str) -> str:
    """The concrete layout for `layout` (one of LAYOUTS): `auto` is `grouped`, the fastest measured
    layout on every backend (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"engine.decode_attention must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    return "grouped" if layout == "auto" else layout


@contextlib.contextmanager
def use_layout(layout: str) -> Iterator[None]:
    """While tracing inside this context, the model's decode steps (one new token over a cache)
    attend with `layout` ("block_diagonal" or "grouped")."""
    from jz3_jax.model import layers

    function = _FUNCTIONS[layout]
    with _SWAP:
        saved = layers.decode_attention
        layers.decode_attention = function
        try:
            yield
        finally:
            layers.decode_attention = saved
