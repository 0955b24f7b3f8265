"""Our decoder against transformers (PyTorch, CPU, fp32) on tiny random models."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hf_models import CASES, make_hf_model
from jz3_jax.checkpoint import load_model
from jz3_jax.checkpoint.fill import load_tensors
from jz3_jax.checkpoint.safetensors_io import iter_safetensors
from jz3_jax.config.schema import DEFAULT_RULES, MeshConfig
from jz3_jax.decoding import greedy_generate
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules

RULES = parse_rules(DEFAULT_RULES)


@nnx.jit
def forward(model, tokens, positions=None, segment_ids=None, cache=None):
    """The model's forward under jit (eager NNX dispatches op by op and is slow)."""
    return model(tokens, positions, segment_ids, cache)
LENGTHS = [12, 7, 3]  # a batch with right padding


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(MeshConfig())


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    hf = make_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, hf, str(path)


def _batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (len(LENGTHS), max(LENGTHS)))
    mask = (np.arange(max(LENGTHS))[None] < np.asarray(LENGTHS)[:, None]).astype(np.int64)
    return tokens * mask, mask


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logits_match_transformers_on_padded_batch(case, mesh, scan_layers):
    name, hf, path = case
    model, _ = load_model(ModelConfig(checkpoint=path, scan_layers=scan_layers), mesh, RULES)
    tokens, mask = _batch(hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask)).logits.numpy()
    ours, _ = forward(model, jnp.asarray(tokens, jnp.int32), None, jnp.asarray(mask, jnp.int32))
    real = mask.astype(bool)
    assert np.abs(np.asarray(ours)[real] - ref[real]).max() <= 1e-4


def test_greedy_decoding_matches_generate(case, mesh):
    name, hf, path = case
    model, _ = load_model(ModelConfig(checkpoint=path), mesh, RULES)
    prompts = [[5, 9, 33, 7], list(range(10, 21)), [3]]
    ours = greedy_generate(model, prompts, 16)
    hf.generation_config.eos_token_id = None  # generate exactly 16 tokens, as ours does
    for prompt, row in zip(prompts, ours):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert row.tolist() == ref[0, len(prompt):].tolist()


def test_sliding_window_changes_logits(tmp_path, mesh):
    """Guards the window test above: without the window our logits must differ from Mistral's."""
    hf = make_hf_model("mistral_window")
    hf.save_pretrained(tmp_path)
    tokens = np.arange(12)[None] % 100
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    windowed, cfg = load_model(ModelConfig(checkpoint=str(tmp_path)), mesh, RULES)
    assert cfg.sliding_window == 5
    full = load_tensors(dataclasses.replace(cfg, sliding_window=0), iter_safetensors(tmp_path), mesh, RULES)
    ours_windowed, _ = forward(windowed, jnp.asarray(tokens, jnp.int32))
    ours_full, _ = forward(full, jnp.asarray(tokens, jnp.int32))
    assert np.abs(np.asarray(ours_windowed) - ref).max() <= 1e-4
    assert np.abs(np.asarray(ours_full)[0, 5:] - ref[0, 5:]).max() > 1e-3


def test_packed_row_equals_sequences_alone(tmp_path, mesh):
    hf = make_hf_model("mistral_window")
    hf.save_pretrained(tmp_path)
    model, _ = load_model(ModelConfig(checkpoint=str(tmp_path)), mesh, RULES)
    rng = np.random.default_rng(1)
    a, b = rng.integers(1, 128, 9), rng.integers(1, 128, 6)
    packed = np.concatenate([a, b, [0, 0, 0]])[None]
    segments = np.asarray([[1] * 9 + [2] * 6 + [0] * 3])
    positions = np.asarray([list(range(9)) + list(range(6)) + [0] * 3])
    logits, _ = forward(model, jnp.asarray(packed, jnp.int32), jnp.asarray(positions, jnp.int32), jnp.asarray(segments, jnp.int32))
    alone_a, _ = forward(model, jnp.asarray(a[None], jnp.int32))
    alone_b, _ = forward(model, jnp.asarray(b[None], jnp.int32))
    logits = np.asarray(logits)
    assert np.abs(logits[0, :9] - np.asarray(alone_a)[0]).max() <= 1e-5
    assert np.abs(logits[0, 9:15] - np.asarray(alone_b)[0]).max() <= 1e-5


def test_kv_cache_chunks_equal_full_forward(tmp_path, mesh):
    hf = make_hf_model("qwen2")
    hf.save_pretrained(tmp_path)
    for scan in (False, True):
        model, _ = load_model(ModelConfig(checkpoint=str(tmp_path), scan_layers=scan), mesh, RULES)
        tokens = jnp.arange(20, dtype=jnp.int32).reshape(2, 10)
        full, _ = forward(model, tokens)
        cache = model.init_cache(2, 16)
        first, cache = forward(model, tokens[:, :6], None, None, cache)
        positions = jnp.broadcast_to(jnp.arange(6, 10, dtype=jnp.int32), (2, 4))
        second, cache = forward(model, tokens[:, 6:], positions, None, cache)
        assert np.abs(np.asarray(jnp.concatenate([first, second], 1) - full)).max() <= 1e-5
        assert cache.index.tolist() == [10, 10]
