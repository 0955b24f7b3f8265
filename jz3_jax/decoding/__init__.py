"""Decoding: prefill + on-device token loop over the model's KV cache."""

from jz3_jax.decoding.greedy import greedy_generate, pad_prompts

__all__ = ["greedy_generate", "pad_prompts"]
