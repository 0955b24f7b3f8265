"""The inference mesh (`engine.mesh`): `load_engine` decodes on its own mesh over this host's devices,
tensor-parallel by default, separate from the training `mesh` (4 forced CPU devices, one subprocess)."""

from __future__ import annotations

from helpers import last_json_line
from jz3_jax.config import Config, apply_overrides
from jz3_jax.decoding.config import EngineConfig
from jz3_jax.runtime.config import DEFAULT_RULES, MeshConfig

SNIPPET = r"""
import json, logging

import jax
from flax import nnx

from jz3_jax.config import apply_overrides, load_config
from jz3_jax.decoding import Request, SamplingParams
from jz3_jax.decoding.factory import load_engine

assert jax.local_device_count() == 4, jax.devices()
logger = logging.getLogger("test")


def run(overrides):
    cfg = apply_overrides(load_config("configs/tiny.py"),
                          ["engine.max_batch=4", "engine.max_seq_len=48", "engine.prompt_bucket=16", *overrides])
    loaded = load_engine(cfg, logger)
    specs = {".".join(map(str, path)): [list(e) if isinstance(e, tuple) else e
                                        for e in leaf.get_value().sharding.spec]
             for path, leaf in nnx.to_flat_state(loaded.engine.params)}
    requests = [Request(list(range(1 + i, 4 + 3 * i)), SamplingParams(temperature=0.0, max_new_tokens=6))
                for i in range(3)]
    tokens = [r.token_ids for r in loaded.engine.generate(requests)]
    return {"mesh": dict(loaded.mesh.shape), "devices": loaded.mesh.size, "specs": specs, "tokens": tokens}


print(json.dumps({"default": run([]), "tensor1": run(["engine.mesh.tensor=1"])}))
"""


def test_engine_config_mesh_defaults_and_overrides():
    cfg = Config()
    assert cfg.engine.mesh == MeshConfig(data=1, fsdp=1, tensor=-1, rules=list(DEFAULT_RULES))
    assert cfg.mesh == MeshConfig()  # the training mesh keeps fsdp=-1
    assert EngineConfig().mesh is not EngineConfig().mesh  # no shared default instance
    apply_overrides(cfg, ["engine.mesh.tensor=2", "engine.mesh.data=-1", "engine.mesh.rules=batch=data,mlp=tensor"])
    assert cfg.engine.mesh == MeshConfig(data=-1, fsdp=1, tensor=2, rules=["batch=data", "mlp=tensor"])
    assert cfg.mesh == MeshConfig()


def test_load_engine_is_tensor_parallel_over_local_devices(run_in_subprocess):
    out = last_json_line(run_in_subprocess(SNIPPET, devices=4))
    default, single = out["default"], out["tensor1"]
    assert default["mesh"] == {"data": 1, "fsdp": 1, "tensor": 4} and default["devices"] == 4
    assert single["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and single["devices"] == 1
    specs = default["specs"]
    assert specs["layers.0.mlp.gate"] == [None, "tensor"], specs  # (embed, mlp): 128 / 4
    assert specs["layers.1.attn.q"] == [None, "tensor", None], specs  # (embed, heads, head_dim): 4 heads / 4
    assert specs["embed"] == ["tensor", None], specs  # (vocab, embed): 260 / 4
    assert all(v == [None] * len(v) for v in single["specs"].values())
    # Greedy decoding on the tensor-parallel mesh gives the very tokens of the one-device engine.
    assert default["tokens"] == single["tokens"]
    assert all(len(t) == 6 for t in default["tokens"])
