"""Rotary position embeddings (the non-interleaved "rotate half" layout of Hugging Face Llama)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jz3_jax.model.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Per-pair inverse frequencies, with linear or llama3 scaling applied.

    Computed in float32 on the host, in the same order of operations as transformers, so the
    tables match it bit for bit.
    """
    dim = cfg.resolved_head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = np.float32(1.0) / (np.float32(cfg.rope_theta) ** exponents)
    kind = cfg.rope_scaling_type
    if kind == "":
        return inv_freq
    if kind == "linear":
        return inv_freq / cfg.rope_scaling_factor
    if kind == "llama3":
        factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old_len = cfg.rope_original_max_position
        low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return np.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope scaling {kind!r} (supported: linear, llama3)")


def rope_tables(inv_freq: jnp.ndarray, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos/sin of shape [batch, length, head_dim] for integer `positions` [batch, length]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq[None, None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate `x` [batch, length, heads, head_dim] by the (float32) tables, in `x`'s dtype.

    As transformers does: the tables are cast to the activations' dtype first, so a bfloat16 model
    rotates in bfloat16 (the same numbers as transformers, and no float32 copies of q and k per
    layer: about 1 GiB per chip of the Mistral-7B pre-training step on v5p-64)."""
    half = x.shape[-1] // 2
    cos, sin = cos.astype(x.dtype)[:, :, None, :], sin.astype(x.dtype)[:, :, None, :]
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
