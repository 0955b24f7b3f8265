"""The two layer-stack layouts (stacked for scan, listed): one set of checkpoint names, exact
conversion both ways, export and fill that agree, LoRA on either layout."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jz3_jax.checkpoint.fill import load_tensors
from jz3_jax.checkpoint.hf_export import export_hf, iter_model_tensors
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.factory import init_model, restack
from jz3_jax.model.lora import add_lora, merge_lora
from jz3_jax.runtime.config import DEFAULT_RULES, MeshConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules

RULES = parse_rules(DEFAULT_RULES)
DENSE = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, num_kv_heads=2)
MOE = dataclasses.replace(DENSE, family="mixtral", num_experts=4)


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(MeshConfig())


def _flat(model) -> dict:
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}


def _assert_same_state(a, b) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        assert fa[key].dtype == fb[key].dtype and np.array_equal(fa[key], fb[key]), key


@pytest.mark.parametrize("cfg", [DENSE, MOE], ids=["dense", "mixtral"])
def test_stacked_and_listed_models_name_and_export_the_same_tensors(cfg, mesh, tmp_path):
    listed = init_model(cfg, mesh, RULES, seed=1)
    stacked = restack(listed, True, mesh, RULES)
    assert stacked.cfg.scan_layers and not listed.cfg.scan_layers
    assert np.asarray(stacked.layers.attn.q[...]).shape[0] == cfg.num_layers  # really one stacked layer
    from_listed, from_stacked = list(iter_model_tensors(listed)), list(iter_model_tensors(stacked))
    assert [n for n, _ in from_listed] == [n for n, _ in from_stacked]
    assert any(".layers.2." in n for n, _ in from_listed)
    for (name, a), (_, b) in zip(from_listed, from_stacked):
        assert np.array_equal(a, b), name
    export_hf(listed, tmp_path / "listed")
    export_hf(stacked, tmp_path / "stacked")
    files = sorted(p.name for p in (tmp_path / "listed").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "stacked").iterdir())
    for name in files:
        if name.endswith(".safetensors"):
            a, b = load_file(tmp_path / "listed" / name), load_file(tmp_path / "stacked" / name)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        else:
            assert (tmp_path / "listed" / name).read_text() == (tmp_path / "stacked" / name).read_text()


@pytest.mark.parametrize("cfg", [DENSE, MOE], ids=["dense", "mixtral"])
def test_fill_and_restack_round_trip_exactly(cfg, mesh):
    listed = init_model(cfg, mesh, RULES, seed=2)
    stacked = restack(listed, True, mesh, RULES)
    stacked_cfg = dataclasses.replace(cfg, scan_layers=True)
    # Filling from named tensors into either layout gives what converting on device gives.
    filled_stacked = load_tensors(stacked_cfg, ((n, a, "test") for n, a in iter_model_tensors(listed)), mesh, RULES)
    _assert_same_state(filled_stacked, stacked)
    filled_listed = load_tensors(cfg, ((n, a, "test") for n, a in iter_model_tensors(stacked)), mesh, RULES)
    _assert_same_state(filled_listed, listed)
    _assert_same_state(restack(stacked, False, mesh, RULES), listed)
    assert restack(listed, False, mesh, RULES) is listed
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)
    forward = nnx.jit(lambda m, t: m(t)[0])
    np.testing.assert_allclose(forward(stacked, tokens), forward(listed, tokens), rtol=1e-5, atol=1e-5)


def test_lora_adapts_and_merges_either_layout_alike(mesh):
    listed = init_model(DENSE, mesh, RULES, seed=3)
    stacked = restack(listed, True, mesh, RULES)
    targets = ["q", "o", "up"]
    add_lora(listed, 2, 4.0, 0.0, targets, seed=0)
    add_lora(stacked, 2, 4.0, 0.0, targets, seed=0)
    rng = np.random.default_rng(0)
    for owner, name in (("attn", "q"), ("attn", "o"), ("mlp", "up")):
        stacked_lora = getattr(getattr(stacked.layers, owner), f"{name}_lora")
        for part in ("a", "b"):  # the same nonzero adapters on both layouts
            values = rng.normal(size=getattr(stacked_lora, part)[...].shape).astype(np.float32)
            getattr(stacked_lora, part)[...] = jnp.asarray(values)
            for i, layer in enumerate(listed.layers):
                lora = getattr(getattr(layer, owner), f"{name}_lora")
                assert getattr(lora, part)[...].shape == values.shape[1:]  # one layer's slice
                getattr(lora, part)[...] = jnp.asarray(values[i])
    tokens = jnp.asarray(rng.integers(0, DENSE.vocab_size, (2, 7)), jnp.int32)
    forward = nnx.jit(lambda m, t: m(t)[0])
    adapted = np.asarray(forward(listed, tokens))
    np.testing.assert_allclose(forward(stacked, tokens), adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="merge_lora first"):
        restack(stacked, False, mesh, RULES)
    merge_lora(listed)
    merge_lora(stacked)
    merged = restack(stacked, False, mesh, RULES)
    for key, value in _flat(listed).items():
        np.testing.assert_allclose(_flat(merged)[key], value, rtol=1e-6, atol=1e-6, err_msg=str(key))
    np.testing.assert_allclose(forward(listed, tokens), adapted, rtol=1e-4, atol=1e-4)
    assert jax.tree.leaves(nnx.state(stacked, nnx.Not(nnx.Param))) == []
