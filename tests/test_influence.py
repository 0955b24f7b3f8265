"""Unit tests of the `select` stage's parts: per-example gradients, projection, Adam feature, store, scores."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import last_json_line, random_examples, run_in_subprocess
from jz3_jax.influence import scoring
from jz3_jax.influence.features import FeatureStore, StoreMismatch
from jz3_jax.influence.gradients import adam_direction, example_loss, per_example_grads
from jz3_jax.influence.featurize import fetch
from jz3_jax.influence.inputs import batch_arrays, plan_batches
from jz3_jax.influence.projection import project

LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q", "k", "v", "o", "up"]}


def tiny_cfg(**select):
    """The select stage's spec of the tiny config, with `select.proj_dim=128` and `select` changes."""
    from jz3_jax.config import build_spec, load_config
    from jz3_jax.influence.spec import SelectSpec

    cfg = load_config("configs/tiny.py")
    cfg.select.proj_dim = 128
    for key, value in select.items():
        setattr(cfg.select, key, value)
    return build_spec(SelectSpec, cfg)


def random_state(model, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [x.shape for x in jax.tree.leaves(model.lora)]
    params = [rng.normal(0, 0.2, s).astype(np.float32) for s in shapes]
    mu = [rng.normal(0, 1e-3, s).astype(np.float32) for s in shapes]
    nu = [(rng.normal(0, 1e-3, s) ** 2).astype(np.float32) for s in shapes]
    return params, mu, nu


@pytest.fixture(scope="module")
def model():
    from jz3_jax.influence.featurize import FeatureModel

    m = FeatureModel(tiny_cfg(), LORA, (0.9, 0.95, 1e-8))
    m.set_arrays(*random_state(m))
    return m


def assert_same_features(got: np.ndarray, want: np.ndarray) -> None:
    """Bitwise equal (fixed chunks of rows per device, one single-device program per device: `FeatureModel`)."""
    assert np.all(np.linalg.norm(want, axis=1) > 0)
    np.testing.assert_array_equal(got, want)


def features_with_budget(model, encoded, rows: int, cfg) -> np.ndarray:
    """Adam features of every example, micro-batches of `rows` rows of one 64-token bucket."""
    cfg.select.token_budget = rows * 64
    out = np.zeros((len(encoded), cfg.select.proj_dim), np.float32)
    for length, chunk in plan_batches(encoded, np.arange(len(encoded)), bucket=64, max_length=64,
                                      token_budget=cfg.select.token_budget, multiple=model.devices):
        assert len(chunk) == rows
        feats = fetch(model.features(batch_arrays(encoded, chunk, length, model.pad_id), adam=True))
        out[chunk[chunk >= 0]] = feats[chunk >= 0]
    return out


def test_padded_vmap_gradients_equal_single_example_grad(model):
    lengths = [3, 30, 51, 64]  # one 64-token bucket: the shortest and the longest in it
    enc = random_examples(lengths)
    batch = batch_arrays(enc, np.arange(len(lengths)), 64, model.pad_id)
    # two chunks of two rows, as the feature job computes them (lax.map over vmapped chunks)
    grads = jax.jit(lambda p, f, b: per_example_grads(model.graphdef, p, f, b, chunk=2))(model.lora, model.frozen,
                                                                                           batch)
    flat = np.concatenate([np.asarray(x).reshape(len(lengths), -1) for x in jax.tree.leaves(grads)], axis=1)
    for i, n in enumerate(lengths):
        single = jax.grad(lambda p: example_loss(model.graphdef, p, model.frozen, jnp.asarray(enc.tokens[i]),
                                                 jnp.asarray(enc.targets[i]), jnp.asarray(enc.loss_mask[i])))
        ref = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(single(model.lora))])
        cos = flat[i] @ ref / (np.linalg.norm(flat[i]) * np.linalg.norm(ref))
        assert np.linalg.norm(ref) > 0
        assert cos >= 0.9999, (n, cos)


def test_features_do_not_depend_on_batch_size(model):
    enc = random_examples([5 + 3 * i for i in range(16)], seed=1)
    cfg = tiny_cfg()
    one = features_with_budget(model, enc, 1, cfg)
    assert np.all(np.linalg.norm(one, axis=1) > 0)
    for rows in (4, 16):
        assert_same_features(features_with_budget(model, enc, rows, cfg), one)


def test_features_equal_on_8_devices(model, tmp_path):
    enc = random_examples([5 + 3 * i for i in range(16)], seed=1)
    one = features_with_budget(model, enc, 1, tiny_cfg())
    out = run_in_subprocess(f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, "tests")
        import jax
        assert jax.device_count() == 8
        from helpers import random_examples
        from test_influence import LORA, features_with_budget, random_state, tiny_cfg
        from jz3_jax.influence.featurize import FeatureModel
        m = FeatureModel(tiny_cfg(), LORA, (0.9, 0.95, 1e-8))
        assert m.devices == 8
        m.set_arrays(*random_state(m))
        enc = random_examples([5 + 3 * i for i in range(16)], seed=1)
        feats = features_with_budget(m, enc, 16, tiny_cfg())
        np.save("{tmp_path}/eight.npy", feats)
        print(json.dumps({{"ok": True}}))
    """, devices=8)
    assert last_json_line(out)["ok"]
    assert_same_features(np.load(tmp_path / "eight.npy"), one)


@pytest.mark.parametrize("kind", ["rademacher", "sparse"])
def test_projection_preserves_inner_products(kind):
    k, pairs = 256, 400
    rng = np.random.default_rng(0)
    x = rng.normal(size=(pairs, 3000))
    y = rng.normal(size=(pairs, 3000))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    # two leaves of a pytree (one smaller than a block, one cut into several blocks)
    tree = lambda v: {"a": jnp.asarray(v[:, :1000].reshape(pairs, 10, 100), jnp.float32),
                      "b": jnp.asarray(v[:, 1000:], jnp.float32)}
    fn = jax.jit(lambda t: project(t, k, seed=3, kind=kind))
    px, py = np.asarray(fn(tree(x)), np.float64), np.asarray(fn(tree(y)), np.float64)
    error = np.sum(px * py, axis=1) - np.sum(x * y, axis=1)
    assert abs(np.std(error) * np.sqrt(k) - 1) <= 0.2, np.std(error) * np.sqrt(k)
    assert abs(np.mean(np.sum(px * px, axis=1)) - 1) < 0.05  # norms preserved on average
    np.testing.assert_array_equal(np.asarray(fn(tree(x))), px.astype(np.float32))  # deterministic
    other = np.asarray(jax.jit(lambda t: project(t, k, seed=4, kind=kind))(tree(x)))
    assert not np.allclose(other, px)


def test_sign_blocks_are_balanced_and_bitwise():
    from jz3_jax.influence.projection import leaf_key, sign_block

    signs = np.asarray(sign_block(leaf_key(0, "x"), 64, 1024))
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert abs(signs.mean()) < 0.01
    words = np.asarray(jax.random.bits(leaf_key(0, "x"), (64, 32), jnp.uint32))
    expected = 1.0 - 2.0 * ((words[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1).reshape(64, 1024)
    np.testing.assert_array_equal(signs, expected)


def test_adam_feature_matches_the_formula_from_an_optax_state():
    from jz3_jax.influence.warmup import adam_state
    from jz3_jax.train.config import OptimizerConfig
    from jz3_jax.train.optimizer import make_optimizer

    cfg = OptimizerConfig(lr=1e-2, b1=0.9, b2=0.99, eps=1e-8, schedule="linear", weight_decay=0.0)
    tx, _ = make_optimizer(cfg, 10)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "v": jnp.asarray(rng.normal(size=5), jnp.float32)}
    state = tx.init(params)
    for _ in range(3):
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        _, state = tx.update(g, state, params)
    adam = adam_state(state)
    assert isinstance(adam, optax.ScaleByAdamState) and int(adam.count) == 3
    g = {k: rng.normal(size=(2, *v.shape)).astype(np.float32) for k, v in params.items()}
    got = adam_direction(jax.tree.map(jnp.asarray, g), adam.mu, adam.nu, cfg.b1, cfg.b2, cfg.eps)
    for key in params:
        m, v = np.asarray(adam.mu[key], np.float64), np.asarray(adam.nu[key], np.float64)
        want = (cfg.b1 * m + (1 - cfg.b1) * g[key]) / np.sqrt(cfg.b2 * v + (1 - cfg.b2) * g[key] ** 2 + cfg.eps)
        np.testing.assert_allclose(np.asarray(got[key]), want, rtol=1e-5)
        assert not np.allclose(want, g[key])


def test_store_resumes_and_rejects_other_settings(tmp_path):
    store = FeatureStore(tmp_path / "s", 10, 64, {"a": 1}, process=0)
    rows = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    store.write(np.array([0, 3, 4]), rows[[0, 3, 4]])
    other = FeatureStore(tmp_path / "s", 10, 64, {"a": 1}, process=1)  # a second writer, its own markers
    assert other.done().tolist() == [i in (0, 3, 4) for i in range(10)]
    rest = np.flatnonzero(~other.done())
    other.write(rest, rows[rest])
    assert store.done().all()
    np.testing.assert_array_equal(np.asarray(FeatureStore(tmp_path / "s", 10, 64, {"a": 1}).read()), rows)
    with pytest.raises(StoreMismatch):
        FeatureStore(tmp_path / "s", 10, 64, {"a": 2})
    with pytest.raises(RuntimeError, match="missing"):
        FeatureStore(tmp_path / "t", 3, 64, {}).read()


@pytest.mark.parametrize("aggregate", ["mean_max", "mean"])
def test_scores_equal_brute_force(aggregate):
    rng = np.random.default_rng(0)
    cands = [rng.normal(size=(20, 16)) for _ in range(3)]
    targs = [rng.normal(size=(5, 16)) for _ in range(3)]
    tasks = ["a", "b", "a", "c", "b"]
    lrs = [3e-5, 2e-5, 1e-5]
    got, per_task, names = scoring.scores(cands, targs, tasks, lrs, aggregate)
    assert names == ["a", "b", "c"]
    w = np.asarray(lrs) / sum(lrs)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = sum(wi * unit(c) @ unit(t).T for wi, c, t in zip(w, cands, targs))  # [20, 5]
    by_task = np.stack([cos[:, [i for i, t in enumerate(tasks) if t == n]].mean(axis=1) for n in names], axis=1)
    np.testing.assert_allclose(per_task, by_task, rtol=1e-10)
    np.testing.assert_allclose(got, by_task.max(axis=1) if aggregate == "mean_max" else by_task.mean(axis=1),
                               rtol=1e-10)
    assert scoring.top_indices(np.array([0.1, 0.5, 0.5, 0.2]), 3, 0).tolist() == [1, 2, 3]
    assert len(scoring.top_indices(np.arange(10.0), 0, 0.25)) == 3


def test_plan_batches_buckets_and_pads():
    enc = random_examples([3, 70, 64, 65, 10, 128], vocab=50)
    plan = plan_batches(enc, np.arange(6), bucket=64, max_length=128, token_budget=128, multiple=1)
    assert [(length, chunk.tolist()) for length, chunk in plan] == [(64, [0, 2]), (64, [4, -1]), (128, [1]),
                                                                  (128, [3]), (128, [5])]
