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

The layout is an argument of the model (`Decoder(..., decode_attention=...)`, or
`model.with_decode_attention(layout)` for a model already built): the engine builds its decode
program from a model carrying its resolved layout, so engines with different layouts can run side
by side in one process, and every other program (training, prefill) keeps its own attention.

These layouts are the contiguous cache's (`engine.paged=false`). The paged cache's decode attention
(`jz3_jax.model.paged_attention`) is `engine.paged_kernel`: `gather` (any backend) or `pallas`
(the TPU kernel); `auto` asks `jz3_jax.model.paged_kernels.choose_paged_impl` where that module
exists, else takes `gather` (`resolve_paged_kernel`).
"""

from __future__ import annotations

import jax

from jz3_jax.model.attention import DECODE_LAYOUTS, grouped_decode_attention

LAYOUTS = ("auto",) + tuple(DECODE_LAYOUTS)

__all__ = ["LAYOUTS", "PAGED_KERNELS", "grouped_decode_attention", "resolve_layout", "resolve_paged_kernel"]


def resolve_layout(layout: str) -> str:
    """The concrete layout for `layout` (one of LAYOUTS): `auto` is `grouped`, the fastest measured
    layout on every backend (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"engine.decode_attention must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    return "grouped" if layout == "auto" else layout


PAGED_KERNELS = ("auto", "gather", "pallas")


def resolve_paged_kernel(kernel: str, model_cfg, page_size: int) -> str:
    """The paged decode attention impl for `kernel` (one of PAGED_KERNELS): "auto" asks
    `jz3_jax.model.paged_kernels.choose_paged_impl` (by backend, model and page size) where that
    module exists, else takes "gather" (the JAX path every backend runs)."""
    if kernel not in PAGED_KERNELS:
        raise ValueError(f"engine.paged_kernel must be one of {', '.join(PAGED_KERNELS)}; got {kernel!r}")
    if kernel != "auto":
        return kernel
    try:
        from jz3_jax.model.paged_kernels import choose_paged_impl  # the TPU kernel's module, where present
    except ImportError:
        return "gather"
    return choose_paged_impl(jax.default_backend(), model_cfg, page_size)
