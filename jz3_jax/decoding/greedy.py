"""Greedy decoding: one jitted prefill of right-padded prompts, then a `lax.scan` over new tokens.

Rows may have different prompt lengths: each row writes its cache from its own length on, so
padding never shifts positions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jz3_jax.model.decoder import Decoder


def bucket_length(n: int, multiple: int = 16) -> int:
    """Round a prompt length up so that similar lengths share one compiled shape."""
    return max(multiple, -(-n // multiple) * multiple)


def pad_prompts(prompts: list[list[int]], pad_id: int = 0, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists to a bucketed length: (tokens [batch, T] int32, lengths [batch] int32)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = bucket_length(max(len(p) for p in prompts), multiple)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, np.asarray([len(p) for p in prompts], np.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _generate(graphdef, state, tokens, lengths, max_new_tokens: int):
    model: Decoder = nnx.merge(graphdef, state)
    batch, width = tokens.shape
    cache = model.init_cache(batch, width + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), tokens.shape)
    segments = (positions < lengths[:, None]).astype(jnp.int32)
    logits, cache = model(tokens, positions, segments, cache)
    first = jnp.argmax(logits[jnp.arange(batch), lengths - 1], axis=-1).astype(jnp.int32)

    def step(carry, _):
        token, cache, position = carry
        logits, cache = model(token[:, None], position[:, None], jnp.ones_like(token)[:, None], cache)
        nxt = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
        return (nxt, cache, position + 1), nxt

    _, rest = jax.lax.scan(step, (first, cache, lengths), None, length=max_new_tokens - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def greedy_generate(model: Decoder, prompts: list[list[int]], max_new_tokens: int) -> np.ndarray:
    """Greedy continuation of each prompt: int32 array [batch, max_new_tokens] (no early stop)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    tokens, lengths = pad_prompts(prompts, model.cfg.pad_token_id)
    graphdef, state = nnx.split(model)
    return np.asarray(_generate(graphdef, state, jnp.asarray(tokens), jnp.asarray(lengths), max_new_tokens))
