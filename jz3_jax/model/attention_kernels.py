"""Fused attention kernels behind `model.attention`: splash (TPU), cuDNN (NVIDIA GPU), or dense.

Both kernels compute the mask of `attention.attention_mask` for training on packed rows (no KV
cache) without ever materialising the [rows, heads, length, length] scores:

- `splash`: the Pallas splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`),
  causal (or Mistral's sliding window as a local mask) and segment ids, under `shard_map` with
  rows over the mesh axes of `batch` and heads over those of `heads`/`kv_heads`. Off TPU it runs in
  Pallas interpret mode (slow: for tests only).
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, causal, sliding window, and the
  segment ids as a boolean [rows, 1, length, length] mask (cuDNN turns it into a bias).

Both treat padding (segment 0) as one more segment, where the dense path gives padding queries a
uniform distribution: the two differ only at padding positions, which no loss reads and no real
token attends to. Causality and the window are counted in row indices, not `positions`: the same
thing for packed rows, whose positions restart at 0 and grow by one inside each segment.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from jz3_jax.errors import ConfigError

ATTENTION_KINDS = ("auto", "dense", "splash", "cudnn")
SPLASH_BLOCK = 512  # query/key tile of the splash kernel (MaxText's default); smaller for short rows

log = logging.getLogger(__name__)


@functools.cache
def _note(message: str) -> None:
    """Log each distinct message once per process (the layers trace once per compile)."""
    log.info(message)


def check_attention_kind(kind: str) -> str:
    """`kind` if it names an attention implementation, else ConfigError."""
    if kind not in ATTENTION_KINDS:
        raise ConfigError(f"model.attention must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    return kind


def current_platform() -> str:
    """The platform the program being traced will run on: the mesh's (set with `jax.set_mesh`,
    e.g. compile-only TPU devices on a CPU host), else the default backend's."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


def resolve_attention(kind: str, platform: str) -> str:
    """The implementation `kind` means on `platform`: `auto` is splash on TPU, cuDNN on NVIDIA GPUs,
    dense elsewhere; an explicit choice stays (cuDNN off an NVIDIA GPU falls back to dense)."""
    check_attention_kind(kind)
    if kind == "auto":
        return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(platform, "dense")
    if kind == "cudnn" and platform not in ("gpu", "cuda"):
        _note(f"model.attention=cudnn needs an NVIDIA GPU, this program runs on {platform}: dense attention")
        return "dense"
    return kind


def _splash_block(length: int, platform: str) -> int | None:
    """The splash tile for rows of `length`, or None when no tile fits (TPU tiles are multiples of 128)."""
    block = min(SPLASH_BLOCK, length)
    while block >= 128 and length % block:
        block //= 2
    if length % block == 0 and (block % 128 == 0 or platform != "tpu"):
        return block
    return None


def _shard_axes(name: str, size: int, rules: tuple, mesh) -> tuple[str, ...]:
    """Mesh axes (size > 1) that the rules give logical axis `name`, if they divide `size`."""
    axes = tuple(a for a in dict(rules).get(name, ()) if mesh.shape.get(a, 1) > 1)
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    return axes if axes and size % shards == 0 else ()


def _spec_entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def splash_attention(q, k, v, segment_ids, sliding_window: int, rules: tuple = (), interpret: bool | None = None):
    """Splash attention for q [b, t, heads, d], k/v [b, t, kv_heads, d], segment_ids [b, t];
    [b, kv_heads, group, t, d] like `attention.dot_product_attention`, or None when the row length
    has no kernel tile (the caller then runs dense attention)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, t, heads, d = q.shape
    kv_heads = k.shape[2]
    platform = current_platform()
    block = _splash_block(t, platform)
    if block is None:
        _note(f"splash attention needs rows of a multiple of 128 tokens, got {t}: dense attention")
        return None
    if interpret is None:
        interpret = platform != "tpu"
        if interpret:
            _note(f"splash attention on {platform} runs in Pallas interpret mode (slow; for tests)")
    q = (q * d**-0.5).astype(q.dtype).transpose(0, 2, 1, 3)  # [b, heads, t, d]: the kernel does not scale
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    segment_ids = segment_ids.astype(jnp.int32)

    mesh = jax.sharding.get_abstract_mesh()
    sharded = not mesh.empty and mesh.size > 1 and bool(rules)
    batch_axes = _shard_axes("batch", b, rules, mesh) if sharded else ()
    head_axes = _shard_axes("heads", heads, rules, mesh) if sharded else ()
    if head_axes != (_shard_axes("kv_heads", kv_heads, rules, mesh) if sharded else ()):
        head_axes = ()  # each device needs the kv heads of its query heads: keep both whole
    head_shards = 1
    for a in head_axes:
        head_shards *= mesh.shape[a]
    local_heads = heads // head_shards

    def kernel(q, k, v, segment_ids):
        shape = (t, t)
        one = sa.CausalMask(shape) if not 0 < sliding_window < t else sa.LocalMask(shape, (sliding_window - 1, 0), 0)
        blocks = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                               block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
        attend = sa.make_splash_mha(sa.MultiHeadMask([one] * local_heads), block_sizes=blocks, head_shards=1,
                                    q_seq_shards=1, interpret=interpret)
        return jax.vmap(lambda q, k, v, s: attend(q, k, v, segment_ids=sa.SegmentIds(s, s)))(q, k, v, segment_ids)

    if sharded and (batch_axes or head_axes):
        from jax.sharding import PartitionSpec as P

        rows, hs = _spec_entry(batch_axes), _spec_entry(head_axes)
        kernel = jax.shard_map(kernel, mesh=mesh, in_specs=(P(rows, hs), P(rows, hs), P(rows, hs), P(rows)),
                               out_specs=P(rows, hs), check_vma=False)
    out = kernel(q, k, v, segment_ids)  # [b, heads, t, d], head h = kv * group + g
    return out.reshape(b, kv_heads, heads // kv_heads, t, d)


def cudnn_attention(q, k, v, segment_ids, sliding_window: int, implementation: str = "cudnn"):
    """cuDNN flash attention for q [b, t, heads, d], k/v [b, t, kv_heads, d], segment_ids [b, t];
    [b, kv_heads, group, t, d], or None where cuDNN does not cover the case (float32: cuDNN's
    fused attention takes only 16-bit inputs). `implementation="xla"` runs the same call through
    XLA (for tests off GPU)."""
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        _note(f"cuDNN attention needs bfloat16/float16 inputs, got {q.dtype}: dense attention")
        return None
    b, t, heads, d = q.shape
    kv_heads = k.shape[2]
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [b, 1, t, t]
    window = (sliding_window - 1, 0) if 0 < sliding_window < t else None
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, is_causal=True,
                                       local_window_size=window, implementation=implementation)
    return out.reshape(b, t, kv_heads, heads // kv_heads, d).transpose(0, 2, 3, 1, 4)


def fused_attention(kind: str, q, k, v, segment_ids, sliding_window: int, rules: tuple = ()):
    """Training-time attention with implementation `kind` (`model.attention`), in the layout of
    `attention.dot_product_attention`; None means the caller should run dense attention."""
    resolved = resolve_attention(kind, current_platform())
    if resolved == "splash":
        return splash_attention(q, k, v, segment_ids, sliding_window, rules)
    if resolved == "cudnn":
        return cudnn_attention(q, k, v, segment_ids, sliding_window)
    return None
