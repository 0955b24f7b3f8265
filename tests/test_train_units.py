"""Trainer pieces without the data pipeline: schedules, the masked/packed loss, LoRA training and merge."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM

from jz3_jax.checkpoint.hf_export import export_hf
from jz3_jax.config import Config
from jz3_jax.config.schema import DEFAULT_RULES, MeshConfig, OptimizerConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.factory import init_model
from jz3_jax.model.lora import LoRAParam, add_lora, merge_lora
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules
from jz3_jax.train.program import build_program, split_model
from jz3_jax.train.schedules import make_schedule
from jz3_jax.train.step import token_losses

RULES = parse_rules(DEFAULT_RULES)


def test_wsd_schedule_matches_formula():
    cfg = OptimizerConfig(lr=1e-3, schedule="wsd", warmup_fraction=0.03, stable_fraction=0.85, min_lr_fraction=0.1)
    total = 1000
    schedule = make_schedule(cfg, total)
    warm, decay_start, last = 30, 850, 999
    assert float(schedule(0)) == pytest.approx(1e-3 / 30)
    assert float(schedule(warm - 1)) == pytest.approx(1e-3)  # warm-up end: the peak
    assert float(schedule(500)) == pytest.approx(1e-3)  # mid-stable
    assert float(schedule(decay_start - 1)) == pytest.approx(1e-3)  # last stable step
    # first decay step: one step of the 150-step linear decay from peak to 10% of peak
    assert float(schedule(decay_start)) == pytest.approx(1e-3 - 0.9e-3 * 1 / 150)
    assert float(schedule(last)) == pytest.approx(1e-4)  # the floor at the last step
    values = np.asarray([float(schedule(s)) for s in range(decay_start, total)])
    assert np.all(np.diff(values) < 0)


def test_cosine_and_linear_end_at_floor():
    for kind in ("cosine", "linear"):
        schedule = make_schedule(OptimizerConfig(lr=2.0, schedule=kind, warmup_fraction=0.1, min_lr_fraction=0.25), 50)
        assert float(schedule(4)) == pytest.approx(2.0)
        assert float(schedule(49)) == pytest.approx(0.5)


def _tiny_model(seed=0, **overrides):
    cfg = dataclasses.replace(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                                          num_heads=4, num_kv_heads=2), **overrides)
    return init_model(cfg, build_mesh(MeshConfig()), RULES, seed)


def _example(rng, n_in, n_out):
    ids = rng.integers(3, 64, n_in + n_out + 1)
    mask = np.zeros(n_in + n_out, np.float32)
    mask[n_in:] = 1.0  # targets that are output tokens
    return ids[:-1], ids[1:], mask


def _batch(rows):
    keys = ("tokens", "targets", "loss_mask", "segment_ids", "positions")
    return {k: jnp.asarray(np.stack([r[i] for r in rows])) for i, k in enumerate(keys)}


def test_packed_loss_is_token_weighted_mean_of_examples():
    model = _tiny_model()
    graphdef, params, frozen = split_model(model, lora=False)
    rng = np.random.default_rng(0)
    examples = [_example(rng, 4, 6), _example(rng, 7, 3), _example(rng, 2, 9)]
    length = 32
    tokens, targets, mask, seg, pos = (np.zeros(length, np.int32) for _ in range(5))
    mask = mask.astype(np.float32)
    cursor = 0
    for i, (t, y, m) in enumerate(examples):
        n = len(t)
        tokens[cursor:cursor + n], targets[cursor:cursor + n], mask[cursor:cursor + n] = t, y, m
        seg[cursor:cursor + n], pos[cursor:cursor + n] = i + 1, np.arange(n)
        cursor += n
    packed_sum, packed_count = token_losses(graphdef, params, frozen, _batch([(tokens, targets, mask, seg, pos)]))
    sums, counts = [], []
    for t, y, m in examples:
        s, c = token_losses(graphdef, params, frozen,
                            _batch([(t, y, m, np.ones(len(t), np.int32), np.arange(len(t), dtype=np.int32))]))
        sums.append(float(s))
        counts.append(float(c))
    assert float(packed_count) == sum(counts) == 18
    assert float(packed_sum / packed_count) == pytest.approx(sum(sums) / sum(counts), abs=1e-6)


def test_masked_input_targets_do_not_change_the_loss():
    model = _tiny_model()
    graphdef, params, frozen = split_model(model, lora=False)
    rng = np.random.default_rng(1)
    t, y, m = _example(rng, 6, 5)
    ones, pos = np.ones(len(t), np.int32), np.arange(len(t), dtype=np.int32)
    y2 = y.copy()
    y2[m == 0] = (y2[m == 0] + 7) % 64  # change only the masked (input) targets
    a, _ = token_losses(graphdef, params, frozen, _batch([(t, y, m, ones, pos)]))
    b, _ = token_losses(graphdef, params, frozen, _batch([(t, y2, m, ones, pos)]))
    c, _ = token_losses(graphdef, params, frozen, _batch([(t, y2, np.ones_like(m), ones, pos)]))
    assert float(a) == float(b)
    assert float(c) != float(a)


def test_lora_trains_only_adapters_and_merged_export_matches(tmp_path):
    cfg = Config()
    cfg.optimizer.lr, cfg.optimizer.schedule, cfg.optimizer.warmup_fraction = 1e-2, "constant", 0.0
    mesh = build_mesh(MeshConfig())
    model = _tiny_model(tie_embeddings=False)
    base = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    add_lora(model, 4, 8.0, 0.0, ["q", "k", "v", "o", "gate", "up", "down"], seed=0)
    graphdef, params, frozen = split_model(model, lora=True)
    assert all(isinstance(v, LoRAParam) for v in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    program = build_program(cfg, graphdef, params, frozen, mesh, RULES, total_steps=5, lora=True)
    state = program.init_state(params)
    rng = np.random.default_rng(2)
    rows = [_example(rng, 4, 11) for _ in range(4)]
    batch = _batch([(t, y, m, np.ones(15, np.int32), np.arange(15, dtype=np.int32)) for t, y, m in rows])
    batch = {k: v[None] for k, v in batch.items()}  # [accum=1, rows, length]
    losses = []
    for _ in range(5):
        state, metrics = program.train_step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    trained = nnx.merge(graphdef, state["params"], frozen)
    after = jax.tree.map(np.asarray, nnx.state(trained, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, after, base)  # base weights untouched
    tokens = jnp.asarray(rng.integers(0, 64, (2, 12)), jnp.int32)
    with_lora = np.asarray(trained(tokens)[0])
    assert np.abs(with_lora - np.asarray(nnx.merge(graphdef, params, frozen)(tokens)[0])).max() > 1e-4
    merge_lora(trained)
    export_hf(trained, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        exported = hf(torch.from_numpy(np.array(tokens)).long()).logits.numpy()
    assert np.abs(exported - with_lora).max() <= 1e-4


def test_gradient_accumulation_equals_one_big_batch():
    cfg = Config()
    cfg.optimizer.schedule, cfg.optimizer.warmup_fraction = "constant", 0.0
    mesh = build_mesh(MeshConfig())
    rng = np.random.default_rng(3)
    rows = [_example(rng, 3 + i % 4, 9 - i % 4) for i in range(8)]
    batch = _batch([(t, y, m, np.ones(12, np.int32), np.arange(12, dtype=np.int32)) for t, y, m in rows])
    results = []
    for accum in (1, 2, 4):
        graphdef, params, frozen = split_model(_tiny_model(), lora=False)
        program = build_program(cfg, graphdef, params, frozen, mesh, RULES, total_steps=3, lora=False)
        state = program.init_state(params)
        split = {k: v.reshape(accum, -1, v.shape[-1]) for k, v in batch.items()}
        state, metrics = program.train_step(state, frozen, split)
        results.append((float(metrics["loss"]), jax.tree.map(np.asarray, state["params"])))
    for loss, params in results[1:]:
        assert loss == pytest.approx(results[0][0], abs=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params, results[0][1])
