"""The TPU side of attention over a paged KV cache: the Pallas paged-attention kernel that ships
with JAX (`jax.experimental.pallas.ops.tpu.paged_attention`), and the choice between it and the
gather path (`paged_attention.paged_decode_attention(impl="gather")`) per backend.

The cache layout is the kernel's own, so nothing is copied or transposed on the way in: per layer
k_pages and v_pages of [kv_heads, num_pages, page_size, head_dim], a page table int32 [rows,
pages_per_row] (unused entries point at scratch page 0), and lengths int32 [rows], the tokens of each
row already in the cache. One query per row, already multiplied by the softmax scale (the kernel
does not scale); rows of length 0 give zeros.

What the kernel needs (checked by `kernel_supports`): a head_dim that fills the TPU's 128 lanes
(a multiple of 128), a page_size that fills whole sublane tiles (a multiple of 8 for 32-bit and 16
for 16-bit caches), query heads a multiple of kv heads, and no sliding window (the kernel attends
[0, length)). It reads `pages_per_compute_block` pages per step with double-buffered DMAs, so that
number must divide pages_per_row; `compute_block_pages` picks the largest that covers at most
`BLOCK_TOKENS` tokens. The kernel multiplies in bfloat16 (it casts the loaded K/V to bfloat16),
which is what a TPU does with float32 matmuls at default precision anyway.

Off TPU the kernel runs in Pallas' TPU interpret mode (slow: for tests only). Under a mesh the call
runs in `shard_map` over the mesh axes that the sharding rules give `kv_heads` (query heads split
the same way) and `batch` (rows), since XLA cannot partition the kernel's custom call by itself.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

IMPLS = ("pallas", "gather")
BLOCK_TOKENS = 512  # cache tokens one kernel step reads per (row, kv head); 2 x 2 buffers of this in VMEM
LANES = 128  # the TPU vector unit's lane width: head_dim must fill whole lanes
SMEM_TABLE_BYTES = 256 * 1024  # page-table bytes per kernel call (it is prefetched into 1 MiB of SMEM)
PAGE_SIZES = {"tpu": 128, "gpu": 64, "cuda": 64, "cpu": 64}  # default tokens per page by backend

log = logging.getLogger(__name__)


def default_page_size(backend: str) -> int:
    """A page size that suits `backend`'s attention path: 128 on TPU (whole 128-token DMA tiles for
    the kernel, a bfloat16 page of 128 x 128 is 32 KiB), 64 elsewhere (the gather path)."""
    return PAGE_SIZES.get(backend, 64)


def _sublanes(dtype: str) -> int:
    """Rows of one TPU vector register tile for a cache of `dtype` (16-bit values pack two per row)."""
    return 8 if jnp.dtype(dtype).itemsize >= 4 else 16


def kernel_supports(model_cfg, page_size: int) -> str:
    """"" when the Pallas kernel can serve `model_cfg`'s decode attention with pages of `page_size`
    tokens, else the reason it cannot."""
    head_dim = model_cfg.resolved_head_dim
    if model_cfg.sliding_window > 0:
        return f"the model attends a sliding window of {model_cfg.sliding_window} (the kernel attends the whole row)"
    if head_dim % LANES:
        return f"head_dim {head_dim} is not a multiple of {LANES}"
    if model_cfg.num_heads % model_cfg.num_kv_heads:
        return f"{model_cfg.num_heads} query heads are not a multiple of {model_cfg.num_kv_heads} kv heads"
    tile = _sublanes(model_cfg.dtype)
    if page_size % tile:
        return f"page_size {page_size} is not a multiple of {tile} ({model_cfg.dtype} sublane tile)"
    return ""


def choose_paged_impl(backend: str, model_cfg, page_size: int) -> str:
    """"pallas" on TPU when the kernel supports the model and page size (`kernel_supports`), else "gather"."""
    if backend != "tpu":
        return "gather"
    reason = kernel_supports(model_cfg, page_size)
    if reason:
        _note(f"paged attention on TPU: gather path, not the Pallas kernel: {reason}")
        return "gather"
    return "pallas"


@functools.cache
def _note(message: str) -> None:
    """Log each distinct message once per process (the layers trace once per compile)."""
    log.info(message)


def compute_block_pages(pages_per_row: int, page_size: int, block_tokens: int = BLOCK_TOKENS) -> int:
    """The kernel's `pages_per_compute_block`: the largest divisor of `pages_per_row` whose pages
    hold at most `block_tokens` tokens (at least 1)."""
    most = max(1, min(pages_per_row, block_tokens // page_size))
    return next(d for d in range(most, 0, -1) if pages_per_row % d == 0)


def _mesh_axes(name: str, size: int, rules, mesh) -> tuple[str, ...]:
    """Mesh axes (of size > 1) that `rules` give logical axis `name`, if together they divide `size`."""
    axes = tuple(a for a in dict(rules).get(name, ()) if mesh.shape.get(a, 1) > 1)
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    return axes if axes and size % shards == 0 else ()


def _entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def pallas_paged_decode_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, lengths: jax.Array,
                                  page_table: jax.Array, *, rules=None, pages_per_compute_block: int = 0,
                                  megacore_mode: str | None = None, interpret: bool | None = None) -> jax.Array:
    """Decode attention of q [rows, heads, head_dim] (already scaled) over the pages of
    k_pages/v_pages [kv_heads, num_pages, page_size, head_dim] listed by page_table [rows,
    pages_per_row], positions [0, lengths) of each row -> [rows, heads, head_dim] in q's dtype.

    `rules` (the model's logical-axis rules; None = the default rules, `runtime.config.DEFAULT_RULES`)
    say how the mesh shards `kv_heads` and `batch`; the kernel then runs per shard in `shard_map`. `pages_per_compute_block` 0 = `compute_block_pages`.
    `megacore_mode` ("kv_head" or "batch") splits the work over the two TensorCores of a v4/v5p chip;
    the default None is always safe. `interpret` None = interpret mode unless on TPU."""
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    from jz3_jax.model.attention_kernels import current_platform

    rows, heads, _ = q.shape
    kv_heads, _, page_size, _ = k_pages.shape
    pages_per_row = page_table.shape[1]
    block = pages_per_compute_block or compute_block_pages(pages_per_row, page_size)
    platform = current_platform()
    if interpret is None:
        interpret = platform != "tpu"
        if interpret:
            _note(f"the Pallas paged-attention kernel on {platform} runs in TPU interpret mode (slow; for tests)")

    def one_call(q, k_pages, v_pages, lengths, page_table):
        call = functools.partial(paged_attention, pages_per_compute_block=block, megacore_mode=megacore_mode)
        if not interpret:
            return call(q, k_pages, v_pages, lengths, page_table)
        from jax.experimental.pallas import tpu as pltpu

        with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
            return call(q, k_pages, v_pages, lengths, page_table)

    def kernel(q, k_pages, v_pages, lengths, page_table):
        # The kernel keeps the page table in SMEM (1 MiB): a larger one goes in chunks of rows.
        chunk = max(1, SMEM_TABLE_BYTES // (4 * page_table.shape[1]))
        n = q.shape[0]
        if n <= chunk:
            return one_call(q, k_pages, v_pages, lengths, page_table)
        pad = -n % chunk  # padding rows have length 0: zeros, and only scratch pages
        q, lengths, page_table = (jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) for x in (q, lengths, page_table))
        outs = [one_call(q[i:i + chunk], k_pages, v_pages, lengths[i:i + chunk], page_table[i:i + chunk])
                for i in range(0, n + pad, chunk)]
        return jnp.concatenate(outs)[:n]

    args = (q, k_pages, v_pages, lengths.astype(jnp.int32), page_table.astype(jnp.int32))
    if rules is None:
        from jz3_jax.runtime.config import DEFAULT_RULES
        from jz3_jax.runtime.sharding import parse_rules

        rules = parse_rules(DEFAULT_RULES)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not rules:
        return kernel(*args)
    head_axes = _mesh_axes("kv_heads", kv_heads, rules, mesh)
    if head_axes != _mesh_axes("heads", heads, rules, mesh):
        head_axes = ()  # each shard needs the kv heads of its own query heads: keep heads whole
    row_axes = tuple(a for a in _mesh_axes("batch", rows, rules, mesh) if a not in head_axes)
    if not head_axes and not row_axes:
        return kernel(*args)
    from jax.sharding import PartitionSpec as P

    hs, rs = _entry(head_axes), _entry(row_axes)
    # Pages are shared by every row (prefix sharing), so a row shard reads the whole pool of its heads.
    sharded = jax.shard_map(kernel, mesh=mesh, in_specs=(P(rs, hs), P(hs), P(hs), P(rs), P(rs)),
                            out_specs=P(rs, hs), check_vma=False)
    return sharded(*args)


def reference_paged_decode_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, lengths: jax.Array,
                                     page_table: jax.Array) -> jax.Array:
    """The same attention written plainly (gather every row's pages, mask past its length, softmax in
    float32); rows of length 0 give zeros like the kernel. For tests and as the semantics' definition."""
    rows, heads, head_dim = q.shape
    kv_heads, _, page_size, _ = k_pages.shape
    k = k_pages[:, page_table].reshape(kv_heads, rows, -1, head_dim)  # [kv_heads, rows, positions, d]
    v = v_pages[:, page_table].reshape(kv_heads, rows, -1, head_dim)
    qg = q.reshape(rows, kv_heads, heads // kv_heads, head_dim).astype(jnp.float32)
    scores = jnp.einsum("rkgd,krsd->rkgs", qg, k.astype(jnp.float32))
    visible = jnp.arange(k.shape[2])[None, :] < lengths[:, None]  # [rows, positions]
    scores = jnp.where(visible[:, None, None], scores, -jnp.inf)
    probs = jax.nn.softmax(jnp.where(lengths[:, None, None, None] > 0, scores, 0.0), axis=-1)
    probs = jnp.where(visible[:, None, None], probs, 0.0)
    out = jnp.einsum("rkgs,krsd->rkgd", probs, v.astype(jnp.float32))
    return out.reshape(rows, heads, head_dim).astype(q.dtype)
