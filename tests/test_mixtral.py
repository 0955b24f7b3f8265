"""Mixtral (sparse mixture of experts) against transformers, and its routing, sharding and training.

A tiny random `MixtralForCausalLM` (4 experts, top-2) is the reference: logits, greedy decoding
through our engine and the HF export must agree with transformers (PyTorch, CPU, fp32); the
router's aux loss must equal transformers' `load_balancing_loss_func`; the dropless path must equal
a dense reference that runs every expert on every token; experts sharded over 4 of 8 forced CPU
devices must give the unsharded loss and gradients.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import last_json_line
from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from jz3_jax.checkpoint import load_model
from jz3_jax.checkpoint.hf_export import export_hf
from jz3_jax.config.schema import DEFAULT_RULES, MeshConfig
from jz3_jax.decoding import greedy_generate
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.moe import MoE, capacity, dropless_experts, load_balancing_loss, route, router_stats
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules
from jz3_jax.train.step import flops_per_token

RULES = parse_rules(DEFAULT_RULES)
LENGTHS = [12, 7, 3]  # a batch with right padding
TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, router_aux_loss_coef=0.02)


def make_mixtral(seed: int = 0) -> MixtralForCausalLM:
    torch.manual_seed(seed)
    return MixtralForCausalLM(MixtralConfig(**TINY)).eval()


@nnx.jit
def forward(model, tokens, segment_ids=None):
    return model(tokens, None, segment_ids, return_aux=True)


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(MeshConfig())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    hf = make_mixtral()
    path = tmp_path_factory.mktemp("mixtral")
    hf.save_pretrained(path)
    return hf, str(path)


def _batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (len(LENGTHS), max(LENGTHS)))
    mask = (np.arange(max(LENGTHS))[None] < np.asarray(LENGTHS)[:, None]).astype(np.int64)
    return tokens * mask, mask


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logits_and_aux_loss_match_transformers_on_padded_batch(hf_dir, mesh, scan_layers):
    hf, path = hf_dir
    model, cfg = load_model(ModelConfig(checkpoint=path, scan_layers=scan_layers), mesh, RULES)
    assert (cfg.family, cfg.num_experts, cfg.experts_per_token, cfg.router_aux_loss_coef) == ("mixtral", 4, 2, 0.02)
    tokens, mask = _batch(hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask), output_router_logits=True)
    logits, _, stats = forward(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32))
    real = mask.astype(bool)
    assert np.abs(np.asarray(logits)[real] - ref.logits.numpy()[real]).max() <= 1e-4
    # transformers' aux loss of the same forward (padding excluded through the attention mask)
    assert abs(float(load_balancing_loss(stats)) - float(ref.aux_loss)) <= 1e-6
    assert float(stats.dropped) == 0.0  # dropless


def test_router_aux_loss_equals_load_balancing_loss_func():
    rng = np.random.default_rng(3)
    layers = [rng.normal(size=(40, 8)).astype(np.float32) * s for s in (0.5, 2.0, 4.0)]
    mask = (rng.random((5, 8)) > 0.3).astype(np.int64)
    for attention_mask in (None, mask):
        ref = load_balancing_loss_func(tuple(torch.from_numpy(x) for x in layers), 8, 2,
                                       None if attention_mask is None else torch.from_numpy(attention_mask))
        flat = np.ones(40, np.float32) if attention_mask is None else attention_mask.reshape(-1).astype(np.float32)
        stats = None
        for x in layers:
            probs, experts, _ = route(jnp.asarray(x), 2)
            one = router_stats(probs, experts, jnp.asarray(flat))
            stats = one if stats is None else stats + one
        assert abs(float(load_balancing_loss(stats)) - float(ref)) <= 1e-6
    assert float(ref) > 2.0  # skewed logits: well above the balanced minimum of top_k (= 2)


def test_greedy_decoding_matches_generate(hf_dir, mesh):
    hf, path = hf_dir
    model, _ = load_model(ModelConfig(checkpoint=path), mesh, RULES)
    prompts = [[5, 9, 33, 7], list(range(10, 21)), [3]]
    ours = greedy_generate(model, prompts, 16)
    hf.generation_config.eos_token_id = None  # generate exactly 16 tokens, as ours does
    for prompt, row in zip(prompts, ours):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert row.tolist() == ref[0, len(prompt):].tolist()


def test_export_loads_in_transformers_with_the_same_logits(hf_dir, mesh, tmp_path):
    hf, path = hf_dir
    for scan in (False, True):
        model, _ = load_model(ModelConfig(checkpoint=path, scan_layers=scan), mesh, RULES)
        export_hf(model, tmp_path / f"export{scan}", max_shard_bytes=64 << 10)  # several shards + index
        assert (tmp_path / f"export{scan}" / "model.safetensors.index.json").is_file()
        again = AutoModelForCausalLM.from_pretrained(tmp_path / f"export{scan}").eval()
        assert type(again).__name__ == "MixtralForCausalLM"
        tokens = torch.from_numpy(_batch(128)[0])
        with torch.no_grad():
            assert torch.abs(again(tokens).logits - hf(tokens).logits).max() <= 1e-5


def test_convert_hf_to_orbax_to_hf(hf_dir, tmp_path, run_launch):
    hf, path = hf_dir
    orbax, back = tmp_path / "orbax", tmp_path / "hf"
    for src, dst, fmt in ((path, orbax, "orbax"), (orbax, back, "hf")):
        proc = run_launch("convert", "--config", "configs/tiny.py", f"convert.src={src}", f"convert.dst={dst}",
                          f"convert.dst_format={fmt}", "mesh.fsdp=1", f"run_dir={tmp_path / 'run'}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    again = AutoModelForCausalLM.from_pretrained(back).eval()
    tokens = torch.from_numpy(_batch(128)[0])
    with torch.no_grad():
        assert torch.abs(again(tokens).logits - hf(tokens).logits).max() <= 1e-5


@nnx.jit
def _apply(layer: MoE, x, segments):
    return layer(x, segments, ())


def _moe_layer(seed: int = 0, **changes) -> MoE:
    cfg = ModelConfig(family="mixtral", hidden_size=16, intermediate_size=24, num_experts=4, experts_per_token=2,
                      **changes)
    return MoE(cfg, rngs=nnx.Rngs(seed))


def _dense_reference(layer: MoE, x: np.ndarray) -> np.ndarray:
    """Every expert on every token, weighted by the router's renormalised top-k mask (numpy, float64)."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    router, gate, up, down = (np.asarray(getattr(layer, n)[...], np.float64) for n in ("router", "gate", "up", "down"))
    logits = rows @ router
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1)[:, :layer.k]
    weights = np.zeros_like(probs)
    np.put_along_axis(weights, top, np.take_along_axis(probs, top, -1), -1)
    weights /= weights.sum(-1, keepdims=True)
    out = np.zeros_like(rows)
    for e in range(gate.shape[0]):
        g, u = rows @ gate[e], rows @ up[e]
        out += weights[:, e:e + 1] * (((g / (1 + np.exp(-g))) * u) @ down[e])
    return out.reshape(x.shape)


def test_dropless_equals_dense_reference_and_large_capacity():
    x = np.random.default_rng(0).normal(size=(3, 10, 16)).astype(np.float32)
    segments = jnp.ones((3, 10), jnp.int32)
    dropless = _moe_layer()
    out, stats = _apply(dropless, jnp.asarray(x), segments)
    assert np.abs(np.asarray(out) - _dense_reference(dropless, x)).max() <= 1e-5
    assert float(stats.dropped) == 0.0
    roomy = _moe_layer(moe_capacity_factor=2.0)  # 2x the balanced load x 4 experts / 2 = room for every token
    capped, capped_stats = _apply(roomy, jnp.asarray(x), segments)
    assert np.abs(np.asarray(capped) - np.asarray(out)).max() <= 1e-5
    assert float(capped_stats.dropped) == 0.0
    # the grouped matmul path itself, on hand-made routing
    experts = jnp.asarray([[0, 3], [3, 0], [1, 3], [3, 2]], jnp.int32)
    weights = jnp.asarray([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5], [0.9, 0.1]], jnp.float32)
    rows = jnp.asarray(x[0, :4])
    w = {n: getattr(dropless, n)[...] for n in ("gate", "up", "down")}
    got, _ = jax.jit(dropless_experts)(rows, experts, weights, w["gate"], w["up"], w["down"])
    expect = sum(weights[:, j:j + 1] * jnp.stack([
        (jax.nn.silu(r @ w["gate"][e]) * (r @ w["up"][e])) @ w["down"][e] for r, e in zip(rows, experts[:, j])])
        for j in range(2))
    assert np.abs(np.asarray(got) - np.asarray(expect)).max() <= 1e-5


def test_capacity_one_drops_tokens_on_a_skewed_router():
    layer = _moe_layer(moe_capacity_factor=1.0)
    router = np.zeros((16, 4), np.float32)
    router[:, 0], router[:, 1] = 5.0, 2.5  # every token's top-2 = experts 0 and 1
    layer.router[...] = jnp.asarray(router)
    x = np.abs(np.random.default_rng(1).normal(size=(2, 8, 16))).astype(np.float32)
    segments = jnp.asarray([[1] * 8, [1] * 6 + [0] * 2], jnp.int32)
    out, stats = _apply(layer, jnp.asarray(x), segments)
    cap = capacity(8, 2, 4, 1.0)  # 4 slots per expert per row; 8 tokens each want experts 0 and 1
    assert cap == 4
    # row 0: 4 of 8 tokens dropped at each of 2 experts; row 1: the same, but its 2 padding tokens
    # (last in order, so among the dropped) are not counted
    assert float(stats.dropped) == 8 + 4
    # kept tokens equal the dropless output; dropped ones (both experts full) give zero
    dropless = _moe_layer(moe_capacity_factor=0.0)
    dropless.router[...] = jnp.asarray(router)
    for n in ("gate", "up", "down"):
        getattr(dropless, n)[...] = getattr(layer, n)[...]
    ref, _ = _apply(dropless, jnp.asarray(x), segments)
    assert np.abs(np.asarray(out)[:, :cap] - np.asarray(ref)[:, :cap]).max() <= 1e-5
    assert np.abs(np.asarray(out)[:, cap:]).max() == 0.0


def test_flops_count_the_router_and_the_active_experts():
    cfg = ModelConfig(family="mixtral", num_experts=8, experts_per_token=2)
    dense = dataclasses.replace(cfg, num_experts=0)
    e, m = cfg.hidden_size, cfg.intermediate_size
    assert flops_per_token(cfg, 16) - flops_per_token(dense, 16) == 6 * cfg.num_layers * (3 * e * m + e * 8)


SHARDED = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
import optax
from flax import nnx
from jz3_jax.checkpoint import load_model
from jz3_jax.config import Config
from jz3_jax.config.schema import DEFAULT_RULES, MeshConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.moe import load_balancing_loss
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules
from jz3_jax.train.program import build_program, split_model
from jz3_jax.train.step import token_losses

assert jax.device_count() == 8
rules = parse_rules(DEFAULT_RULES)
rng = np.random.default_rng(0)
batch = {"tokens": rng.integers(1, 128, (8, 16)), "targets": rng.integers(1, 128, (8, 16)),
         "loss_mask": (rng.random((8, 16)) > 0.2).astype(np.int32), "segment_ids": np.ones((8, 16), np.int32),
         "positions": np.tile(np.arange(16), (8, 1))}
batch["segment_ids"][:, 13:] = 0
batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}

def loss_fn(graphdef, frozen, b):
    def f(params):
        nll, count, stats = token_losses(graphdef, params, frozen, b, with_aux=True)
        aux = load_balancing_loss(stats)
        return nll / count + 0.02 * aux, aux
    return f

out = {}
for cf in (0.0, 1.0):
    results = {}
    for name, mcfg in (("single", MeshConfig(data=1, fsdp=1, tensor=1)), ("sharded", MeshConfig(fsdp=2, expert=4))):
        mesh = build_mesh(mcfg, jax.devices()[:1] if name == "single" else None)
        with jax.set_mesh(mesh):
            model, _ = load_model(ModelConfig(checkpoint=sys.argv[1], scan_layers=True, moe_capacity_factor=cf),
                                  mesh, rules)
            graphdef, params, frozen = split_model(model, False)
            step = jax.jit(lambda p, fr, b: jax.value_and_grad(loss_fn(graphdef, fr, b), has_aux=True)(p))
            (loss, aux), grads = step(params, frozen, batch)
            spec = str(model.layers.moe.gate[...].sharding.spec)
            shard = list(model.layers.moe.gate[...].addressable_shards[0].data.shape)
        results[name] = (float(loss), float(aux), jax.tree.map(np.asarray, grads), spec, shard, dict(mesh.shape))
    a, b = results["single"], results["sharded"]
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a[2], b[2]))
    out[str(cf)] = {"loss": [a[0], b[0]], "aux": [a[1], b[1]], "grad_diff": max(diffs),
                    "grad_max": max(float(np.abs(x).max()) for x in jax.tree.leaves(a[2])),
                    "spec": b[3], "shard": b[4], "mesh": b[5]}

# a few real train steps (the trainer's program) on the expert-parallel mesh
cfg = Config()
cfg.optimizer.lr, cfg.optimizer.schedule, cfg.optimizer.weight_decay = 3e-3, "constant", 0.0
cfg.mesh = MeshConfig(fsdp=2, expert=4)
mesh = build_mesh(cfg.mesh)
with jax.set_mesh(mesh):
    model, _ = load_model(ModelConfig(checkpoint=sys.argv[1], scan_layers=True), mesh, rules)
    graphdef, params, frozen = split_model(model, False)
    program = build_program(cfg, graphdef, params, frozen, mesh, rules, total_steps=8, lora=False)
    state = program.init_state(params)
    accum = {k: jax.device_put(jnp.tile(v, (2, 1)).reshape(2, 8, 16), program.batch_sharding(3))
             for k, v in batch.items()}  # two micro-batches of 8 rows
    losses, metrics = [], None
    for _ in range(8):
        state, metrics = program.train_step(state, frozen, accum)
        losses.append(float(metrics["loss"]))
out["train"] = {"losses": losses, "keys": sorted(metrics), "aux": float(metrics["router_aux_loss"]),
                "dropped": float(metrics["tokens_dropped"])}
print(json.dumps(out))
"""


def test_experts_sharded_over_four_devices_equal_unsharded_and_train(hf_dir, run_in_subprocess):
    _, path = hf_dir
    out = last_json_line(run_in_subprocess(SHARDED, devices=8, args=(path,)))
    for cf in ("0.0", "1.0"):
        run = out[cf]
        assert run["mesh"] == {"data": 1, "fsdp": 2, "expert": 4, "tensor": 1}
        assert run["spec"] == "P(None, 'expert', 'fsdp', None)"  # [layers, experts, embed, mlp]
        assert run["shard"] == [2, 1, 16, 48]
        assert abs(run["loss"][0] - run["loss"][1]) <= 1e-5 and abs(run["aux"][0] - run["aux"][1]) <= 1e-5
        assert run["grad_diff"] <= 1e-5 and run["grad_max"] > 1e-3
    train = out["train"]
    assert {"router_aux_loss", "tokens_dropped", "loss"} <= set(train["keys"])
    assert train["losses"][-1] < train["losses"][0] - 0.1, train["losses"]
    assert train["aux"] > 0 and train["dropped"] == 0.0
