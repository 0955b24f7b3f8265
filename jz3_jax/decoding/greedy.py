"""Greedy decoding of a list of prompts for a fixed number of tokens (parity checks, quick use)."""

from __future__ import annotations

import numpy as np

from jz3_jax.decoding.buckets import bucket_length
from jz3_jax.decoding.engine import Engine
from jz3_jax.decoding.requests import Request
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.model.decoder import Decoder


def greedy_generate(model: Decoder, prompts: list[list[int]], max_new_tokens: int) -> np.ndarray:
    """Greedy continuation of each prompt: int32 array [batch, max_new_tokens] (no early stop at EOS)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    length = bucket_length(max(len(p) for p in prompts)) + max_new_tokens
    engine = Engine(model, max_batch=len(prompts), max_seq_len=length)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    results = engine.generate([Request(list(p), params) for p in prompts])
    return np.asarray([r.token_ids for r in results], np.int32)
