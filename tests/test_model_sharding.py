"""Sharded forward on 8 forced CPU devices (fsdp=4, tensor=2) equals the unsharded forward."""

from __future__ import annotations

import json

from hf_models import make_hf_model

CODE = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jz3_jax.checkpoint import load_model
from jz3_jax.config.schema import DEFAULT_RULES, MeshConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules

assert jax.device_count() == 8
rules = parse_rules(DEFAULT_RULES)
tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (8, 16)), jnp.int32)
forward = nnx.jit(lambda m, t: m(t)[0])
out = {}
for scan in (False, True):
    cfg = ModelConfig(checkpoint=sys.argv[1], scan_layers=scan)
    single = build_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    with jax.set_mesh(single):
        model, _ = load_model(cfg, single, rules)
        alone = np.asarray(forward(model, tokens))
    mesh = build_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    with jax.set_mesh(mesh):
        model, _ = load_model(cfg, mesh, rules)
        q = model.layers.attn.q[...] if scan else model.layers[0].attn.q[...]
        sharded = np.asarray(forward(model, tokens))
    out[str(scan)] = {"diff": float(np.abs(sharded - alone).max()), "q_spec": str(q.sharding.spec),
                      "q_shards": len(q.addressable_shards), "q_shard_shape": list(q.addressable_shards[0].data.shape)}
print(json.dumps(out))
"""


def test_sharded_forward_equals_unsharded(tmp_path, run_in_subprocess):
    make_hf_model("llama").save_pretrained(tmp_path)
    result = json.loads(run_in_subprocess(CODE, devices=8, args=(str(tmp_path),)).strip().splitlines()[-1])
    unstacked, stacked = result["False"], result["True"]
    assert unstacked["q_spec"] == "P('fsdp', 'tensor', None)"
    assert unstacked["q_shard_shape"] == [16, 2, 16]  # [embed 64/4, heads 4/2, head_dim 16]
    assert stacked["q_spec"] == "P(None, 'fsdp', 'tensor', None)"
    for run in (unstacked, stacked):
        assert run["diff"] <= 1e-5
