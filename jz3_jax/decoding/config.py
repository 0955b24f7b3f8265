"""The decoding config sections (`cfg.sampling`, `cfg.engine`): plain dataclasses (a leaf module)."""

from __future__ import annotations

import dataclasses

from jz3_jax.runtime.config import MeshConfig


def _engine_mesh() -> MeshConfig:
    return MeshConfig(data=1, fsdp=1, tensor=-1)


@dataclasses.dataclass
class SamplingConfig:
    """Decoding settings used by synthesize/eval/serve."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int = 0


@dataclasses.dataclass
class EngineConfig:
    """The decoding engine shared by synthesize/serve/eval: rows decoded together and cache length.

    `max_seq_len` bounds prompt + new tokens per request; `steps_per_dispatch` tokens are decoded on
    device per host round trip; prompts are padded up to the next prefill width of
    `prompt_bucket * 2**i` (or `max_seq_len`), so serve and synthesize compile a few prefill
    programs once at warm-up. `max_top_k` is the largest top_k a request may ask for (top-k and
    top-p filters draw their candidates from `jax.lax.top_k` of this many logits).
    `max_logprobs` is the most top log-probabilities a request may ask for (`logprobs` /
    `top_logprobs` in serve; 0 turns log-probabilities off); a request that asks runs separately
    compiled decode programs that also return them, so plain decoding pays nothing.
    `decode_attention` is the decode step's attention layout: auto (grouped, on every
    backend), block_diagonal or grouped.
    `paged` (default) keeps the KV cache in a pool of pages of `page_size` tokens shared by the rows
    (`paged=false`: a contiguous `max_batch` x `max_seq_len` cache): `max_batch` then caps the rows
    running at once, and the pool (`num_pages`, else `kv_cache_gib`, else 0: the contiguous cache's
    bytes) bounds their tokens; `prefix_cache` shares full prompt pages between requests with the
    same prefix; `paged_kernel` is the paged decode attention (auto: the Pallas kernel on TPU where
    it applies, else the gather path).
    `mesh` is the engine's own mesh over this host's devices (one engine replica per host), separate
    from the training `mesh`: by default tensor-parallel over all local devices, so a decode step
    never all-gathers weights.
    """

    max_batch: int = 16
    max_seq_len: int = 2048
    steps_per_dispatch: int = 8
    prompt_bucket: int = 64
    max_top_k: int = 64
    max_logprobs: int = 20
    decode_attention: str = "auto"  # auto | block_diagonal | grouped (contiguous cache)
    paged: bool = True  # paged KV cache; false: contiguous rows of max_seq_len
    page_size: int = 64  # tokens per page
    num_pages: int = 0  # pages in the pool, the scratch page included; 0: from kv_cache_gib
    kv_cache_gib: float = 0.0  # pool size in GiB when num_pages is 0; 0: the bytes of max_batch x max_seq_len
    prefix_cache: bool = True  # share full prompt pages between requests with the same prefix
    paged_kernel: str = "auto"  # auto | gather | pallas
    mesh: MeshConfig = dataclasses.field(default_factory=_engine_mesh)
