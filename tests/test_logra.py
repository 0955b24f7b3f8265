"""LoGra-style features (`select.gradients=logra`): one backward pass equals the Kronecker projection
of each example's exact gradient from the `vmap` path, with and without factored preconditioning."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import random_examples
from jz3_jax.influence.gradients import per_example_grads
from jz3_jax.influence.inputs import batch_arrays
from jz3_jax.influence.logra import feature_fn, split_taps
from jz3_jax.model.logra import add_logra, taps
from jz3_jax.model.lora import LoRAParam, add_lora

TARGETS = ["q", "o", "down"]
ADAM = (0.9, 0.95, 1e-8)


def tiny_model(scan_layers: bool = False):
    from jz3_jax.config import load_config
    from jz3_jax.model.decoder import Decoder

    cfg = dataclasses.replace(load_config("configs/tiny.py").model, scan_layers=scan_layers, dtype="float32",
                              param_dtype="float32")
    return Decoder(cfg, rngs=nnx.Rngs(0))


def randomize(state, seed, scale, square=False):
    rng = np.random.default_rng(seed)
    def one(x):
        v = rng.normal(0, scale, x.shape)
        return jnp.asarray(v * v if square else v, x.dtype)
    return jax.tree.map(one, state)


def build(params: str, scan_layers: bool = False):
    """(model with taps, exact graphdef, exact trainable state, exact frozen state)."""
    model = tiny_model(scan_layers)
    if params == "lora":
        add_lora(model, 4, 8.0, 0.0, TARGETS, 0)
        graphdef, lora, frozen = nnx.split(model, LoRAParam, ...)
        nnx.update(model, randomize(lora, 1, 0.2))
        graphdef, lora, frozen = nnx.split(model, LoRAParam, ...)
    else:
        is_target = lambda path, x: isinstance(x, nnx.Param) and path[-1] in TARGETS
        graphdef, lora, frozen = nnx.split(model, is_target, ...)
    add_logra(model, TARGETS, params, 3, 5, seed=7)
    return model, graphdef, lora, frozen


def dense_reference(model, params, scan_layers, grads, moments=None):
    """Each example's exact gradient (optionally LESS-preconditioned with the factored second moment,
    applied densely) projected by (P_out ⊗ P_in), in tap order."""
    grad_model = nnx.merge(*_graph_with(model, params, grads))
    parts = []
    pairs = taps(model, TARGETS, params)
    grad_pairs = taps(grad_model, TARGETS, params)
    mom_pairs = [None] * len(pairs) if moments is None else list(zip(*(taps(nnx.merge(*_graph_with(model, params, m)),
                                                                           TARGETS, params) for m in moments)))
    for (t, _), (_, g), mom in zip(pairs, grad_pairs, mom_pairs):
        g = np.asarray(g[...], np.float64)  # [rows, *lead, *in, *out]
        if scan_layers:
            g = np.moveaxis(g, 0, 1)  # [layers, rows, ...]
        lead = 1 if scan_layers else 0
        p_in = np.asarray(t.p_in[...], np.float64)
        p_out = np.asarray(t.p_out[...], np.float64)
        k_in, k_out = p_in.shape[lead], p_out.shape[lead]
        p_in = p_in.reshape(*p_in.shape[:lead + 1], -1)
        p_out = p_out.reshape(*p_out.shape[:lead + 1], -1)
        d_in = p_in.shape[-1]
        g = g.reshape(*g.shape[:lead + 1], d_in, -1)
        if mom is not None:
            m = np.asarray(mom[0][1][...], np.float64).reshape(*g.shape[:lead], d_in, -1)
            v = ADAM[1] * np.asarray(mom[1][1][...], np.float64).reshape(m.shape) + ADAM[2]
            r, c = v.mean(-1), v.mean(-2)
            v_hat = r[..., :, None] * c[..., None, :] / r.mean(-1)[..., None, None]
            m = np.expand_dims(m, lead)
            v_hat = np.expand_dims(v_hat, lead)
            g = (ADAM[0] * m + (1 - ADAM[0]) * g) / np.sqrt(v_hat)
        if scan_layers:
            f = np.einsum("lob,lrab,lia->rloi", p_out, g, p_in)
        else:
            f = np.einsum("ob,rab,ia->roi", p_out, g, p_in)
        parts.append(f.reshape(f.shape[0], -1))
        assert k_in == 3 and k_out == 5
    return np.concatenate(parts, axis=1)


def _graph_with(model, params, values):
    """(graphdef, states) of `model` with the projected matrices' values replaced by `values`."""
    if params == "lora":
        graphdef, _, rest = nnx.split(model, LoRAParam, ...)
    else:
        graphdef, _, rest = nnx.split(model, lambda path, x: isinstance(x, nnx.Param) and path[-1] in TARGETS, ...)
    return graphdef, values, rest


@pytest.mark.parametrize("params,preconditions,scan_layers", [
    ("lora", ("none", "factored"), False), ("linear", ("none",), False), ("lora", ("factored",), True)])
def test_logra_equals_projected_exact_gradients(params, preconditions, scan_layers):
    model, graphdef, trainable, frozen = build(params, scan_layers)
    lengths = [3, 30, 64, 17, 100, 128]  # two buckets (64 and 128), padded rows included
    enc = random_examples(lengths)
    tap_graph, tap_state, lora, rest = split_taps(model)
    moments = (randomize(lora, 2, 1e-3), randomize(lora, 3, 1e-3, square=True))
    fns = {p: jax.jit(feature_fn(tap_graph, TARGETS, params, stacked=scan_layers, precondition=p,
                                 adam=ADAM if p == "factored" else None)) for p in preconditions}
    exact = jax.jit(lambda p, f, b: per_example_grads(graphdef, p, f, b))
    for length, members in ((64, [0, 1, 2, 3]), (128, [4, 5])):
        chunk = np.array(members + [-1], np.int64)  # an all-masked pad row too
        batch = batch_arrays(enc, chunk, length, 0)
        grads = exact(trainable, frozen, batch)
        for precondition, fn in fns.items():
            factored = precondition == "factored"
            got = np.asarray(fn(tap_state, lora, rest, moments if factored else None, batch), np.float64)
            want = dense_reference(model, params, scan_layers, grads, moments if factored else None)
            assert got.shape == want.shape
            assert np.all(np.linalg.norm(want[:-1], axis=1) > 0)
            if not factored:
                np.testing.assert_array_equal(got[-1], 0)
            for i in range(len(members)):
                err = np.linalg.norm(got[i] - want[i]) / np.linalg.norm(want[i])
                assert err < 1e-5, (precondition, length, i, err)


# --- the stage's LograModel: sharded like training ------------------------------------------------

LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q", "k", "v", "o", "up"]}


def logra_model(**mesh):
    """The tiny config's `LograModel` (factored candidates) with random adapters and moments."""
    import sys

    sys.path.insert(0, "tests")
    from test_influence import random_state, tiny_cfg

    from jz3_jax.influence.logra_model import LograModel

    spec = tiny_cfg(gradients="logra")
    spec = dataclasses.replace(spec, mesh=dataclasses.replace(spec.mesh, **mesh))
    m = LograModel(spec, LORA, ADAM)
    m.set_arrays(*random_state(m))
    return m


def all_features(m, adam=True) -> np.ndarray:
    """Features of 12 examples in two buckets (64, 128), micro-batches of 8 rows."""
    from jz3_jax.influence.featurize import fetch
    from jz3_jax.influence.inputs import plan_batches

    enc = random_examples([5 + 9 * i for i in range(12)], seed=1)
    out = np.zeros((12, m.dim), np.float32)
    for length, chunk in plan_batches(enc, np.arange(12), bucket=64, max_length=128, token_budget=8 * 64,
                                      multiple=m.devices):
        feats = fetch(m.features(batch_arrays(enc, chunk, length, m.pad_id), adam))
        out[chunk[chunk >= 0]] = feats[chunk >= 0]
    return out


def test_logra_features_on_8_devices_with_fsdp_and_tensor_equal_one_device(tmp_path):
    from helpers import last_json_line, run_in_subprocess

    one = all_features(logra_model(data=1, fsdp=-1, tensor=1))
    assert one.shape == (12, 20 * 2 * 3) and np.all(np.linalg.norm(one, axis=1) > 0)  # 128 // 20 = 6 = 2 x 3
    out = run_in_subprocess(f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, "tests")
        import jax
        assert jax.device_count() == 8
        from test_logra import all_features, logra_model
        m = logra_model(data=2, fsdp=2, tensor=2)
        assert m.devices == 4 and dict(m.mesh.shape) == {{"data": 2, "fsdp": 2, "tensor": 2}}
        assert any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
                   for x in jax.tree.leaves(m.frozen))
        np.save("{tmp_path}/eight.npy", all_features(m))
        print(json.dumps({{"ok": True}}))
    """, devices=8)
    assert last_json_line(out)["ok"]
    eight = np.load(tmp_path / "eight.npy")
    err = np.linalg.norm(eight - one, axis=1) / np.linalg.norm(one, axis=1)
    assert err.max() < 1e-5, err


def test_tap_dims_split_proj_dim_near_square():
    from jz3_jax.influence.logra import tap_dims

    assert tap_dims(8192, 240) == (4, 8)  # SmolLM2, LoRA A and B on q/k/v/o: 7,680 features
    assert tap_dims(8192, 256) == (4, 8)  # Mistral-7B: 8,192
    assert tap_dims(8192, 1) == (64, 128)
    assert tap_dims(8192, 240, 6, 5) == (6, 5) and tap_dims(8192, 240, 2) == (2, 17)
    with pytest.raises(ValueError, match="smaller than"):
        tap_dims(100, 240)


@pytest.mark.parametrize("settings,message", [
    ({"gradients": "logra", "precondition": "exact"}, "needs select.gradients=exact"),
    ({"gradients": "logra", "params": "linear"}, "set select.precondition=none"),
    ({"gradients": "exact", "precondition": "factored"}, "select.precondition=exact or none"),
    ({"gradients": "fast"}, "exact or logra"),
])
def test_inconsistent_gradient_settings_are_config_errors(settings, message):
    from jz3_jax.errors import ConfigError
    from jz3_jax.influence.config import SelectConfig
    from jz3_jax.influence.stage import check_gradients

    with pytest.raises(ConfigError, match=message):
        check_gradients(SelectConfig(**settings))
    check_gradients(SelectConfig(gradients="logra", params="linear", precondition="none"))
