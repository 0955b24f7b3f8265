"""`compile.program=decode`: ahead-of-time compile of the decoding engine's decode step for a TPU host.

The engine runs one replica per host over that host's chips (`engine.mesh`, tensor-parallel by
default), holding the weights and a KV cache of `engine.max_batch` rows x `engine.max_seq_len`
positions. This compiles the same `decoding.steps.decode` dispatch the engine runs
(`engine.steps_per_dispatch` tokens) on the first host of `compile.topology` (use a single-host
slice: v5p-8, v5e-8, v6e-8) and reports per chip: weights, KV cache, the compiler's total, and
whether it fits in HBM. Nothing is allocated and no weights are read.

    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/sft_synthesizer_deepseekmath7b.py \
        compile.program=decode compile.topology=v5p-8
"""

from __future__ import annotations

import inspect
import math
import time
from typing import TYPE_CHECKING

from jz3_jax.errors import ConfigError
from jz3_jax.train.compile_analysis import fmt_gib, memory_of, param_report, tree_bytes_per_device
from jz3_jax.train.tpu_topology import parse_topology, tpu_devices

if TYPE_CHECKING:
    from jz3_jax.train.spec import CompileSpec


def host_devices(devices: list) -> list:
    """The devices of the slice's first host (the engine's replica spans one host)."""
    first = min(d.process_index for d in devices)
    return [d for d in devices if d.process_index == first]


def compile_decode_step(cfg: CompileSpec, log=print) -> dict:
    """Lower and compile one engine decode dispatch for one host of `cfg.compile.topology`; the report."""
    import jax
    from flax import nnx

    from jz3_jax.checkpoint import resolve_model_config
    from jz3_jax.decoding import steps
    from jz3_jax.decoding.attention import resolve_layout
    from jz3_jax.decoding.factory import engine_devices
    from jz3_jax.model.factory import abstract_model
    from jz3_jax.runtime.mesh import build_mesh
    from jz3_jax.runtime.sharding import parse_rules, state_shardings

    e = cfg.engine
    if e.max_batch < 1 or e.max_seq_len < 2 or e.steps_per_dispatch < 1:
        raise ConfigError("compile.program=decode needs engine.max_batch >= 1, engine.max_seq_len >= 2 and "
                          "engine.steps_per_dispatch >= 1")
    spec = parse_topology(cfg.compile.topology)
    devices = engine_devices(e.mesh, host_devices(tpu_devices(spec, 1)))
    mesh = build_mesh(e.mesh, devices=devices)
    rules = parse_rules(e.mesh.rules)
    model_cfg = resolve_model_config(cfg.model)
    layout = resolve_layout(e.decode_attention)
    graphdef, abstract = nnx.split(abstract_model(model_cfg, rules, decode_attention=layout))
    shardings = state_shardings(abstract, rules, mesh)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    log(f"compile: decode on {len(devices)} chip(s) of one {spec.name} host ({devices[0].device_kind}), engine mesh "
        f"{dict(mesh.shape)}, cache {e.max_batch} rows x {e.max_seq_len} positions, {e.steps_per_dispatch} "
        f"token(s) per dispatch")

    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        init = steps.init_state.lower(graphdef, params, slots=e.max_batch, length=e.max_seq_len).compile()
        shapes = jax.eval_shape(lambda p: steps.init_state(graphdef, p, e.max_batch, e.max_seq_len), params)
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                             init.output_shardings)
        keep = jax.ShapeDtypeStruct((e.max_batch,), jax.numpy.bool_,
                                    sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        options = {"steps": e.steps_per_dispatch, "eos_ids": (model_cfg.eos_token_id,)}
        accepted = inspect.signature(steps.decode).parameters
        if "max_top_k" in accepted and hasattr(e, "max_top_k"):
            options["max_top_k"] = min(e.max_top_k, model_cfg.vocab_size)
        lowered = steps.decode.lower(graphdef, params, state, keep, **options)
    t_lower = time.perf_counter() - t0
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t1

    hbm = spec.hbm_bytes
    memory = memory_of(compiled, hbm)
    _, undivided, weight_bytes = param_report(shardings, abstract, rules, mesh)
    cache_bytes = tree_bytes_per_device((state.cache.k, state.cache.v))
    return {
        "program": "decode",
        "topology": {"name": spec.name, "generation": spec.generation, "chips": spec.chips,
                     "devices": len(devices), "device_kind": devices[0].device_kind,
                     "topology_name": spec.topology_name, "hbm_bytes_per_device": hbm},
        "mesh": {a: int(mesh.shape[a]) for a in mesh.axis_names},
        "engine": {"max_batch": e.max_batch, "max_seq_len": e.max_seq_len,
                   "steps_per_dispatch": e.steps_per_dispatch, "decode_attention": layout,
                   **{k: v for k, v in options.items() if k != "eos_ids"}},
        "model": {"family": model_cfg.family, "num_layers": model_cfg.num_layers, "num_kv_heads": model_cfg.num_kv_heads,
                  "params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
                  "param_dtype": model_cfg.param_dtype, "dtype": model_cfg.dtype, "scan_layers": model_cfg.scan_layers},
        "memory_per_device": {**memory, "weight_bytes": weight_bytes, "kv_cache_bytes": cache_bytes,
                              "weights_plus_cache_bytes": weight_bytes + cache_bytes},
        "fits": memory["total_bytes"] <= hbm,
        "replicated_not_divisible": undivided,
        "seconds": {"lower": round(t_lower, 2), "compile": round(t_compile, 2)},
    }


def decode_summary(report: dict) -> str:
    """The decode report as the few lines the stage prints."""
    m, t, e = report["memory_per_device"], report["topology"], report["engine"]
    lines = [
        f"compile: decode step of {report['model']['params'] / 1e9:.3f}B params on {t['devices']} chip(s) of "
        f"{t['name']} (mesh {report['mesh']}), {e['max_batch']} rows x {e['max_seq_len']} positions",
        f"  per chip: weights {fmt_gib(m['weight_bytes'])} ({report['model']['param_dtype']}), KV cache "
        f"{fmt_gib(m['kv_cache_bytes'])} ({report['model']['dtype']}), together {fmt_gib(m['weights_plus_cache_bytes'])}",
        f"  compiler: arguments {fmt_gib(m['argument_bytes'])}, temporaries {fmt_gib(m['temp_bytes'])}, total "
        f"{fmt_gib(m['total_bytes'])} of {fmt_gib(m['hbm_bytes'])} HBM ({100 * m['fraction_of_hbm']:.1f}%): "
        f"{'fits' if report['fits'] else 'DOES NOT FIT'}",
        f"  lowered in {report['seconds']['lower']} s, compiled in {report['seconds']['compile']} s",
    ]
    if report["replicated_not_divisible"]:
        lines.append(f"  replicated (not divisible): {'; '.join(report['replicated_not_divisible'])}")
    return "\n".join(lines)
