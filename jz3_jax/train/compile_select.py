"""The `compile` stage's select program: the `logra` feature step, ahead of time, on a TPU slice.

`compile.program=select` builds the reference model abstractly (shapes only, no weights read)
over the compile-only devices of `compile.topology` with the training mesh and rules table,
attaches the LoRA layout of the `select` stage (`lora.*`, or LESS's r=128 on q/k/v/o) and the
logra taps (`select.proj_dim` split over the matrices, or `select.logra_in/out`), and compiles the
candidates' feature step (factored preconditioning, `select.precondition=none` gives the plain one)
for `compile.per_device_batch` rows x `data.max_length` tokens per device. The report gives the
per-device memory against the chip's HBM and the FLOPs per example.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from jz3_jax.train.compile_analysis import (check_batch, compiled_cost, fmt_gib, memory_of, spec_json,
                                            tree_bytes_per_device)
from jz3_jax.train.tpu_topology import parse_topology, tpu_devices

if TYPE_CHECKING:
    from jz3_jax.train.spec import CompileSpec


def compile_select_step(cfg: CompileSpec, log=print) -> dict:
    """Lower and compile the logra candidate feature step; the report (also when it does not fit)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding

    from jz3_jax.checkpoint import resolve_model_config
    from jz3_jax.influence.logra import feature_fn, split_taps, tap_dims
    from jz3_jax.influence.warmup import LESS_LORA
    from jz3_jax.model.factory import abstract_model
    from jz3_jax.model.logra import add_logra, count_matrices
    from jz3_jax.model.lora import add_lora
    from jz3_jax.runtime.sharding import logical_to_spec, parse_rules, state_shardings
    from jz3_jax.train.compile_train import topology_mesh
    from jz3_jax.train.step import flops_per_token

    c, s = cfg.compile, cfg.select
    spec = parse_topology(c.topology)
    devices = tpu_devices(spec, c.num_slices)
    mesh = topology_mesh(cfg, devices, c.num_slices)
    rules = parse_rules(cfg.mesh.rules)
    n, length = len(devices), cfg.data.max_length
    rows = c.per_device_batch * n
    check_batch(rows, length, rules, mesh)
    lora = ({"rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "targets": list(cfg.lora.targets)}
            if cfg.lora.rank > 0 else dict(LESS_LORA))
    precondition = "none" if s.precondition == "none" else "factored"
    model_cfg = resolve_model_config(cfg.model)
    t0 = time.perf_counter()
    dims = {}

    def attach(m):
        add_lora(m, lora["rank"], lora["alpha"], 0.0, lora["targets"], cfg.seed)
        dims["k"] = tap_dims(s.proj_dim, count_matrices(m, lora["targets"], s.params), s.logra_in, s.logra_out)
        add_logra(m, lora["targets"], s.params, *dims["k"], s.proj_seed)
        return m

    model = nnx.eval_shape(attach, abstract_model(model_cfg, rules))
    graphdef, taps, lora_state, frozen = split_taps(model)
    adam = (cfg.optimizer.b1, cfg.optimizer.b2, cfg.optimizer.eps)
    fn = feature_fn(graphdef, lora["targets"], s.params, stacked=model_cfg.scan_layers, precondition=precondition,
                    adam=adam, loss_chunk=cfg.train.loss_chunk, rules=model.rules)

    def abstract(tree):
        shardings = state_shardings(tree, rules, mesh)
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)

    batch_sharding = NamedSharding(mesh, logical_to_spec(("batch", "length"), rules, mesh))
    batch = {k: jax.ShapeDtypeStruct((rows, length), jnp.float32 if k == "loss_mask" else jnp.int32,
                                     sharding=batch_sharding) for k in ("tokens", "targets", "loss_mask")}
    lora_abstract = abstract(lora_state)
    args = (abstract(taps), lora_abstract, abstract(frozen),
            (lora_abstract, lora_abstract) if precondition == "factored" else None, batch)
    with jax.set_mesh(mesh):
        lowered = jax.jit(fn).lower(*args)
    t_lower = time.perf_counter() - t0
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t1
    memory = memory_of(compiled, spec.hbm_bytes)
    k_in, k_out = dims["k"]
    dim = sum(math.prod(z.shape[:-3]) for z in jax.tree.leaves(taps[0])) * k_in * k_out
    fpt = flops_per_token(model_cfg, length)  # training: 6 x matmul params + attention (forward and backward)
    # The feature step: the forward (a third of a train step) and the backward to the activations
    # (another third: no weight gradients of the frozen base), plus one more forward under full remat.
    share = 2 / 3 + (1 / 3 if model_cfg.remat in ("full", "nothing_saveable") else 0)
    cost = compiled_cost(compiled)
    report = {
        "program": "select",
        "topology": {"name": spec.name, "chips": spec.chips, "devices": n, "device_kind": devices[0].device_kind,
                     "hbm_bytes_per_device": spec.hbm_bytes},
        "mesh": {a: int(mesh.shape[a]) for a in mesh.axis_names},
        "batch": {"per_device_batch": c.per_device_batch, "rows": rows, "sequence_length": length,
                  "spec": spec_json(batch_sharding.spec)},
        "model": {"family": model_cfg.family, "num_layers": model_cfg.num_layers,
                  "param_dtype": model_cfg.param_dtype, "dtype": model_cfg.dtype, "remat": model_cfg.remat,
                  "scan_layers": model_cfg.scan_layers},
        "logra": {"params": s.params, "lora": lora, "precondition": precondition, "k_in": k_in, "k_out": k_out,
                  "feature_dim": dim},
        "memory_per_device": {**memory, "expected_state_bytes": sum(tree_bytes_per_device(a) for a in args[:3])},
        "fits": memory["total_bytes"] <= spec.hbm_bytes,
        "flops": {"analytic_per_example": share * fpt * length, "analytic_per_device_step": share * fpt * length * rows / n,
                  "compiled_per_device": cost.get("flops"),
                  "compiled_counts_loop_bodies_once": bool(model_cfg.scan_layers)},
        "seconds": {"lower": round(t_lower, 2), "compile": round(t_compile, 2)},
    }
    return report


def select_summary(report: dict) -> str:
    """The select report as the few lines the stage prints."""
    m, f, t, g = report["memory_per_device"], report["flops"], report["topology"], report["logra"]
    return "\n".join([
        f"compile: select's logra feature step on {t['name']} ({t['devices']} devices, mesh {report['mesh']}), "
        f"{report['batch']['per_device_batch']} x {report['batch']['sequence_length']} tokens per device",
        f"  taps: {g['params']} ({g['lora']['rank'] if g['params'] == 'lora' else 'full'}), {g['k_out']} x "
        f"{g['k_in']} per matrix, {g['feature_dim']} features, precondition {g['precondition']}",
        f"  per device: arguments {fmt_gib(m['argument_bytes'])}, outputs {fmt_gib(m['output_bytes'])}, "
        f"temporaries {fmt_gib(m['temp_bytes'])}; total {fmt_gib(m['total_bytes'])} of {fmt_gib(m['hbm_bytes'])} "
        f"HBM ({100 * m['fraction_of_hbm']:.1f}%): {'fits' if report['fits'] else 'DOES NOT FIT'}",
        f"  FLOPs per example: analytic {f['analytic_per_example']:.3e} (forward + backward to the activations"
        f"{' + remat forward' if report['model']['remat'] in ('full', 'nothing_saveable') else ''})",
        f"  lowered in {report['seconds']['lower']} s, compiled in {report['seconds']['compile']} s",
    ])
