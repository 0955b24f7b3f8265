"""Device mesh, logical-axis rules and sharded placement on 8 forced CPU devices (one subprocess),
plus `runtime.distributed.resolve` (a pure function, tested in-process)."""

from __future__ import annotations

import pytest

from helpers import last_json_line
from jz3_jax.errors import ConfigError
from jz3_jax.runtime import distributed
from jz3_jax.runtime.config import DEFAULT_RULES, DistributedConfig
from jz3_jax.runtime.sharding import parse_rules

# Everything that needs 8 devices runs in one fresh interpreter; it prints one JSON object whose
# PartitionSpecs are lists (None -> null, a multi-axis entry -> a list of axis names).
SNIPPET = r"""
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jz3_jax.errors import ConfigError
from jz3_jax.runtime.config import DEFAULT_RULES, MeshConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import logical_to_spec, parse_rules, state_shardings

assert jax.device_count() == 8, jax.devices()


class Toy(nnx.Module):
    def __init__(self, seed):
        rng = np.random.default_rng(seed)  # numpy init: no per-shape compiles of random ops

        def init(*shape):
            return jnp.asarray(rng.normal(0.0, 0.5, shape).astype(np.float32))

        self.embed = nnx.Param(init(256, 64), logical_axes=("vocab", "embed"))
        self.up = nnx.Param(init(64, 128), logical_axes=("embed", "mlp"))
        self.down = nnx.Param(init(128, 64), logical_axes=("mlp", "embed"))
        self.q = nnx.Param(init(64, 4, 16), logical_axes=("embed", "heads", "head_dim"))
        self.kv = nnx.Param(init(64, 3, 16), logical_axes=("embed", "kv_heads", "head_dim"))
        self.norm = nnx.Param(1.0 + init(64), logical_axes=("norm",))
        self.odd = nnx.Param(init(6, 128), logical_axes=("embed", "mlp"))
        self.stacked = nnx.Param(init(2, 64, 128), logical_axes=("embed", "mlp"))  # scanned layers
        self.plain = nnx.Param(init(64, 128))  # no annotation


def spec_json(spec):
    return [list(e) if isinstance(e, tuple) else e for e in spec]


def flat(state):
    return {".".join(map(str, path)): leaf for path, leaf in nnx.to_flat_state(state)}


def forward(state, tokens):
    p = {k: v.get_value() for k, v in flat(state).items()}
    h = p["embed"][tokens] * p["norm"]                                # (b, l, 64)
    q = jnp.einsum("ble,ehd->blhd", h, p["q"])
    k = jnp.einsum("ble,ehd->blhd", h, p["kv"])
    h = h + jnp.tanh(h @ p["up"]) @ p["down"] + jnp.tanh(h @ p["stacked"][1]) @ p["down"]
    h = h + (h @ p["plain"]) @ p["down"] * 0.01
    return {"h": h, "qk": jnp.einsum("blhd,bmgd->blmhg", q, k).sum(), "odd": (p["odd"] @ p["up"].T).sum(),
            "mean": h.mean()}


rules = parse_rules(DEFAULT_RULES)
model = Toy(0)
state = nnx.state(model)
abstract = nnx.state(nnx.eval_shape(lambda: Toy(0)))
tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 16)), jnp.int32)
reference = jax.device_get(jax.jit(forward)(state, tokens))

out = {"rules": {k: list(v) for k, v in rules.items()}, "meshes": {}}
for name, sizes in {"d1f4t2": (1, 4, 2), "d2f4t1": (2, 4, 1)}.items():
    mesh = build_mesh(MeshConfig(data=sizes[0], fsdp=sizes[1], tensor=sizes[2]))
    res = {"shape": dict(mesh.shape)}
    shardings = flat(state_shardings(abstract, rules, mesh))
    res["state"] = {k: spec_json(v.get_value().spec) for k, v in shardings.items()}
    res["mesh_ok"] = all(v.get_value().mesh == mesh for v in shardings.values())
    res["logical"] = {
        "ble_8": spec_json(logical_to_spec(("batch", "length", "embed"), rules, mesh, (8, 16, 64))),
        "ble_4": spec_json(logical_to_spec(("batch", "length", "embed"), rules, mesh, (4, 16, 64))),
        "ble_noshape": spec_json(logical_to_spec(("batch", "length", "embed"), rules, mesh)),
        "blv": spec_json(logical_to_spec(("batch", "length", "vocab"), rules, mesh, (8, 16, 256))),
        "none_mlp": spec_json(logical_to_spec((None, "mlp"), rules, mesh, (3, 128))),
    }
    errors = {}
    for label, names, table in [("unknown_name", ("nope",), rules),
                                ("unknown_axis", ("x",), parse_rules(["x=pipeline"]))]:
        try:
            logical_to_spec(names, table, mesh, (8,))
            errors[label] = None
        except ConfigError as e:
            errors[label] = str(e)
    res["errors"] = errors

    placed = jax.device_put(state, state_shardings(abstract, rules, mesh))
    placed_flat = flat(placed)
    res["placed"] = {k: spec_json(v.get_value().sharding.spec) for k, v in placed_flat.items()}
    res["shard_shapes"] = {k: list(v.get_value().addressable_shards[0].data.shape) for k, v in placed_flat.items()}
    res["num_shards"] = {k: len({s.device for s in v.get_value().addressable_shards}) for k, v in placed_flat.items()}
    with jax.set_mesh(mesh):
        sharded = jax.device_get(jax.jit(forward)(placed, tokens))
    res["max_abs_diff"] = max(float(np.max(np.abs(np.asarray(sharded[k]) - np.asarray(reference[k]))))
                              for k in reference)
    res["reference_scale"] = float(np.max(np.abs(reference["h"])))
    out["meshes"][name] = res

fills = {}
for label, cfg, devices in [
    ("data2_fill", MeshConfig(data=2, fsdp=-1, tensor=1), None),
    ("tensor_fill", MeshConfig(data=1, fsdp=2, tensor=-1), None),
    ("default", MeshConfig(), None),
    ("first4", MeshConfig(data=1, fsdp=-1, tensor=1), jax.devices()[:4]),
    ("not_divisible", MeshConfig(data=3, fsdp=-1, tensor=1), None),
    ("wrong_product", MeshConfig(data=2, fsdp=2, tensor=1), None),
    ("two_fills", MeshConfig(data=-1, fsdp=-1, tensor=1), None),
    ("zero", MeshConfig(data=0, fsdp=-1, tensor=1), None),
]:
    try:
        mesh = build_mesh(cfg, devices)
        fills[label] = {"shape": dict(mesh.shape), "axis_types": [str(t) for t in mesh.axis_types],
                        "devices": sorted(d.id for d in mesh.devices.flat)}
    except ConfigError as e:
        fills[label] = {"error": str(e)}
out["fills"] = fills
print(json.dumps(out))
"""

N = None
# The rules table (DEFAULT_RULES) says: vocab/mlp/heads/kv_heads -> tensor, embed -> fsdp,
# batch -> data+fsdp, everything else replicated; mesh axes of size 1 are never named.
EXPECTED_STATE = {
    "d1f4t2": {
        "embed": ["tensor", "fsdp"],
        "up": ["fsdp", "tensor"],
        "down": ["tensor", "fsdp"],
        "q": ["fsdp", "tensor", N],
        "kv": ["fsdp", N, N],          # 3 kv heads do not divide by tensor=2: replicated
        "norm": [N],
        "odd": [N, "tensor"],          # embed=6 does not divide by fsdp=4: replicated
        "stacked": [N, "fsdp", "tensor"],  # leading scanned dimension is "layers" (replicated)
        "plain": [N, N],
    },
    "d2f4t1": {
        "embed": [N, "fsdp"],
        "up": ["fsdp", N],
        "down": [N, "fsdp"],
        "q": ["fsdp", N, N],
        "kv": ["fsdp", N, N],
        "norm": [N],
        "odd": [N, N],
        "stacked": [N, "fsdp", N],
        "plain": [N, N],
    },
}
EXPECTED_LOGICAL = {
    "d1f4t2": {
        "ble_8": ["fsdp", N, N],           # data=1 is dropped; embed's fsdp is already used by batch
        "ble_4": ["fsdp", N, N],
        "ble_noshape": ["fsdp", N, N],
        "blv": ["fsdp", N, "tensor"],
        "none_mlp": [N, "tensor"],
    },
    "d2f4t1": {
        "ble_8": [["data", "fsdp"], N, N],
        "ble_4": [N, N, "fsdp"],           # batch 4 does not divide by data*fsdp=8, so embed gets fsdp
        "ble_noshape": [["data", "fsdp"], N, N],
        "blv": [["data", "fsdp"], N, N],
        "none_mlp": [N, N],
    },
}
# Local shard shapes of the placed parameters (each device's piece).
EXPECTED_SHARD_SHAPES = {
    "d1f4t2": {"embed": [128, 16], "up": [16, 64], "down": [64, 16], "q": [16, 2, 16], "kv": [16, 3, 16],
               "norm": [64], "odd": [6, 64], "stacked": [2, 16, 64], "plain": [64, 128]},
    "d2f4t1": {"embed": [256, 16], "up": [16, 128], "down": [128, 16], "q": [16, 4, 16], "kv": [16, 3, 16],
               "norm": [64], "odd": [6, 128], "stacked": [2, 16, 128], "plain": [64, 128]},
}
MESHES = ["d1f4t2", "d2f4t1"]


@pytest.fixture(scope="module")
def results(run_in_subprocess):
    return last_json_line(run_in_subprocess(SNIPPET, devices=8))


def test_parse_default_rules():
    assert parse_rules(DEFAULT_RULES) == {
        "batch": ("data", "fsdp", "expert"), "length": (), "embed": ("fsdp", "expert"), "mlp": ("tensor",),
        "heads": ("tensor",), "kv_heads": ("tensor",), "head_dim": (), "norm": (), "vocab": ("tensor",), "layers": (),
        "experts": ("expert",),
    }
    assert parse_rules([" a = data + fsdp ", "b="]) == {"a": ("data", "fsdp"), "b": ()}
    with pytest.raises(ConfigError, match="logical=axis"):
        parse_rules(["batch"])


def test_rules_survive_the_subprocess(results):
    assert results["rules"] == {k: list(v) for k, v in parse_rules(DEFAULT_RULES).items()}


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_shape(results, mesh):
    sizes = {"d1f4t2": {"data": 1, "fsdp": 4, "tensor": 2}, "d2f4t1": {"data": 2, "fsdp": 4, "tensor": 1}}[mesh]
    assert results["meshes"][mesh]["shape"] == sizes


@pytest.mark.parametrize("mesh", MESHES)
def test_state_shardings_follow_rules(results, mesh):
    res = results["meshes"][mesh]
    assert res["state"] == EXPECTED_STATE[mesh]
    assert res["mesh_ok"]


@pytest.mark.parametrize("mesh", MESHES)
def test_logical_to_spec(results, mesh):
    assert results["meshes"][mesh]["logical"] == EXPECTED_LOGICAL[mesh]


@pytest.mark.parametrize("mesh", MESHES)
def test_logical_to_spec_errors(results, mesh):
    errors = results["meshes"][mesh]["errors"]
    assert errors["unknown_name"] and "'nope'" in errors["unknown_name"]
    assert errors["unknown_axis"] and "'pipeline'" in errors["unknown_axis"]


@pytest.mark.parametrize("mesh", MESHES)
def test_device_put_places_arrays_on_state_shardings(results, mesh):
    res = results["meshes"][mesh]
    assert res["placed"] == EXPECTED_STATE[mesh]
    assert res["shard_shapes"] == EXPECTED_SHARD_SHAPES[mesh]
    assert set(res["num_shards"].values()) == {8}  # every array lives on all 8 devices


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_jit_matches_unsharded(results, mesh):
    res = results["meshes"][mesh]
    assert res["reference_scale"] > 1.0  # the computation is not trivially zero
    assert res["max_abs_diff"] < 1e-4 * res["reference_scale"]


def test_build_mesh_fills_remaining_devices(results):
    fills = results["fills"]
    assert fills["data2_fill"]["shape"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert fills["tensor_fill"]["shape"] == {"data": 1, "fsdp": 2, "tensor": 4}
    assert fills["default"]["shape"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert fills["first4"]["shape"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert len(fills["first4"]["devices"]) == 4
    assert fills["default"]["devices"] == list(range(8))
    for label in ("data2_fill", "tensor_fill", "default"):
        assert all("Auto" in t for t in fills[label]["axis_types"]), fills[label]


@pytest.mark.parametrize(
    "label, needle",
    [("not_divisible", "do not divide"), ("wrong_product", "does not match"), ("two_fills", "at most one"),
     ("zero", "positive")],
)
def test_build_mesh_rejects_bad_sizes(results, label, needle):
    assert "error" in results["fills"][label], results["fills"][label]
    assert needle in results["fills"][label]["error"]


# --- distributed.resolve: config > JZ3_* env > TPU pod auto-detection ----------------------------

ENV_KEYS = ["JZ3_COORDINATOR_ADDRESS", "JZ3_NUM_PROCESSES", "JZ3_PROCESS_ID", "TPU_WORKER_HOSTNAMES"]


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_resolve_single_process_by_default(clean_env):
    assert distributed.resolve(DistributedConfig()) is None
    clean_env.setenv("JZ3_NUM_PROCESSES", "1")
    assert distributed.resolve(DistributedConfig()) is None


def test_resolve_from_config(clean_env):
    cfg = DistributedConfig(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=0)
    assert distributed.resolve(cfg) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 0}


def test_resolve_from_env(clean_env):
    clean_env.setenv("JZ3_COORDINATOR_ADDRESS", "127.0.0.1:5555")
    clean_env.setenv("JZ3_NUM_PROCESSES", "2")
    clean_env.setenv("JZ3_PROCESS_ID", "1")
    assert distributed.resolve(DistributedConfig()) == {
        "coordinator_address": "127.0.0.1:5555", "num_processes": 2, "process_id": 1}


def test_resolve_config_wins_over_env(clean_env):
    clean_env.setenv("JZ3_COORDINATOR_ADDRESS", "127.0.0.1:5555")
    clean_env.setenv("JZ3_NUM_PROCESSES", "2")
    clean_env.setenv("JZ3_PROCESS_ID", "1")
    cfg = DistributedConfig(coordinator_address="10.0.0.9:7", num_processes=3, process_id=0)
    assert distributed.resolve(cfg) == {"coordinator_address": "10.0.0.9:7", "num_processes": 3, "process_id": 0}
    # keys left empty in the config still come from the environment
    assert distributed.resolve(DistributedConfig(process_id=0)) == {
        "coordinator_address": "127.0.0.1:5555", "num_processes": 2, "process_id": 0}


def test_resolve_disabled_ignores_everything(clean_env):
    clean_env.setenv("JZ3_COORDINATOR_ADDRESS", "127.0.0.1:5555")
    clean_env.setenv("JZ3_NUM_PROCESSES", "2")
    clean_env.setenv("JZ3_PROCESS_ID", "1")
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "h0,h1")
    assert distributed.resolve(DistributedConfig(enabled="false")) is None


@pytest.mark.parametrize(
    "cfg, env",
    [
        (DistributedConfig(coordinator_address="127.0.0.1:1"), {}),                       # no count, no id
        (DistributedConfig(coordinator_address="127.0.0.1:1", num_processes=2), {}),     # no id
        (DistributedConfig(num_processes=2, process_id=0), {}),                           # no address
        (DistributedConfig(), {"JZ3_NUM_PROCESSES": "2", "JZ3_PROCESS_ID": "0"}),        # no address
        (DistributedConfig(enabled="maybe"), {}),
    ],
)
def test_resolve_incomplete_or_invalid_raises(clean_env, cfg, env):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError):
        distributed.resolve(cfg)


def test_resolve_non_integer_env_is_config_error(clean_env):
    # a ConfigError makes the launcher exit 2 with a message, not crash with a traceback
    clean_env.setenv("JZ3_COORDINATOR_ADDRESS", "127.0.0.1:5555")
    clean_env.setenv("JZ3_NUM_PROCESSES", "two")
    clean_env.setenv("JZ3_PROCESS_ID", "0")
    with pytest.raises(ConfigError, match="JZ3_NUM_PROCESSES"):
        distributed.resolve(DistributedConfig())
    clean_env.setenv("JZ3_NUM_PROCESSES", "2")
    clean_env.setenv("JZ3_PROCESS_ID", "first")
    with pytest.raises(ConfigError, match="JZ3_PROCESS_ID"):
        distributed.resolve(DistributedConfig())
    assert distributed.resolve(DistributedConfig(process_id=1))["process_id"] == 1  # config wins, env unread


def test_resolve_enabled_true_or_tpu_pod_lets_jax_autodetect(clean_env):
    assert distributed.resolve(DistributedConfig(enabled="true")) == {}
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0,t1k-w-1")
    assert distributed.resolve(DistributedConfig()) == {}
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0")  # a single-host TPU VM is not a pod
    assert distributed.resolve(DistributedConfig()) is None


def test_maybe_initialize_single_process_does_nothing(clean_env):
    assert distributed.maybe_initialize(DistributedConfig()) is False
    assert distributed.maybe_initialize(DistributedConfig(enabled="false", num_processes=4)) is False
