"""The `compile` stage's train program: ahead-of-time compile of the real train step on a TPU slice.

The stage (`compile.py`) runs it as one of its programs: the model and optimizer state are created
abstractly (shapes only, nothing allocated, no weights read) over the compile-only devices of
`compile.topology`, the same `train_step` the trainer runs is lowered and compiled, and the report
gives what the compiler says one device needs against the chip's HBM, the step's FLOPs and MFU,
the parameter shardings and, with `compile.find_max_batch=true`, the largest `per_device_batch`
that fits (searched by compiling).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

from jz3_jax.errors import ConfigError
from jz3_jax.train.compile_analysis import (check_batch, compiled_cost, fmt_gib, kernels_in, memory_of,
                                            mfu_report, out_of_memory, param_report, peak_flops_of,
                                            search_max_batch, spec_json, tree_bytes_per_device)
from jz3_jax.train.tpu_topology import parse_topology, tpu_devices

if TYPE_CHECKING:
    from jz3_jax.train.spec import CompileSpec


def topology_mesh(cfg: CompileSpec, devices: list, num_slices: int):
    """The (data, fsdp, tensor) mesh over the compile-only devices.

    One slice: `build_mesh` (what the trainer does). Several slices: data parallelism runs across
    slices (over the data-center network), so `mesh.data` must be a multiple of
    `compile.num_slices`; fsdp and tensor stay inside a slice.
    """
    from jz3_jax.runtime.mesh import MESH_AXES, build_mesh, resolve_mesh_shape

    if num_slices == 1:
        return build_mesh(cfg.mesh, devices=devices)
    from jax.experimental import mesh_utils
    from jax.sharding import AxisType, Mesh

    data, fsdp, tensor = resolve_mesh_shape(cfg.mesh, len(devices))
    if data % num_slices:
        raise ConfigError(f"with compile.num_slices={num_slices} the data axis spans the slices: set mesh.data to a "
                          f"multiple of {num_slices} (got data={data}, fsdp={fsdp}, tensor={tensor})")
    array = mesh_utils.create_hybrid_device_mesh((data // num_slices, fsdp, tensor), (num_slices, 1, 1),
                                                 devices=devices)
    return Mesh(array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


# --- checks and reports ------------------------------------------------------------------------


@dataclasses.dataclass
class AbstractTrainStep:
    """Everything needed to lower the train step, as shapes with shardings (nothing allocated)."""

    program: Any
    params: Any  # abstract trainable params
    frozen: Any  # abstract frozen variables
    state: dict  # ShapeDtypeStructs of the train state, with shardings
    frozen_state: Any  # ShapeDtypeStructs of the frozen variables, with shardings
    batch: dict  # ShapeDtypeStructs of one global batch [accum, rows, length]
    model_cfg: Any


def abstract_train_step(cfg: CompileSpec, mesh, rules, rows: int) -> AbstractTrainStep:
    """The trainer's train program for `cfg` on `mesh`, built from an abstract model.

    `rows` is the number of rows per micro-step over all devices. With a concrete mesh of this
    machine's devices, `program.lower_train_step` gives the same program the trainer lowers.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jz3_jax.checkpoint import resolve_model_config
    from jz3_jax.model.factory import abstract_model
    from jz3_jax.model.lora import add_lora
    from jz3_jax.train.program import build_program, split_model
    from jz3_jax.train.step import BATCH_KEYS

    model_cfg = resolve_model_config(cfg.model)
    lora = cfg.lora.rank > 0
    # Only tracing runs under the TPU mesh: eager ops (optax's state init inside build_program)
    # would otherwise be placed on the compile-only devices, which cannot execute anything.
    model = abstract_model(model_cfg, rules)
    if lora:
        def attach(m):
            add_lora(m, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, cfg.seed)
            return m

        model = nnx.eval_shape(attach, model)
    graphdef, params, frozen = split_model(model, lora)
    steps = cfg.train.steps if cfg.train.steps > 0 else 1000  # the schedule's length; shapes do not change
    program = build_program(cfg, graphdef, params, frozen, mesh, rules, steps, lora)
    state = program.abstract_state(params)
    frozen_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), frozen, program.frozen_shardings)
    batch_sharding = program.batch_sharding(3)
    shape = (cfg.train.grad_accum, rows, cfg.data.max_length)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_mask" else jnp.int32, sharding=batch_sharding)
             for k in BATCH_KEYS}
    return AbstractTrainStep(program, params, frozen, state, frozen_state, batch, model_cfg)


def _compile(cfg: CompileSpec, mesh, rules, rows: int):
    """(compiled train step, AbstractTrainStep, lower seconds, compile seconds) for `rows` per micro-step."""
    t0 = time.perf_counter()
    abstract = abstract_train_step(cfg, mesh, rules, rows)
    lowered = abstract.program.lower_train_step(abstract.state, abstract.frozen_state, abstract.batch)
    t_lower = time.perf_counter() - t0
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, abstract, t_lower, time.perf_counter() - t1


def compile_train_step(cfg: CompileSpec, log=print) -> dict:
    """Lower and compile the train step for `cfg.compile.topology`; the report (also when it does not fit)."""
    import jax

    from jz3_jax.model.attention_kernels import resolve_attention
    from jz3_jax.runtime.mesh import MESH_AXES
    from jz3_jax.runtime.sharding import parse_rules
    from jz3_jax.train.step import flops_per_token

    c = cfg.compile
    spec = parse_topology(c.topology)
    if c.per_device_batch < 1:
        raise ConfigError(f"compile.per_device_batch must be >= 1, got {c.per_device_batch}")
    if cfg.train.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1, got {cfg.train.grad_accum}")
    devices = tpu_devices(spec, c.num_slices)
    mesh = topology_mesh(cfg, devices, c.num_slices)
    rules = parse_rules(cfg.mesh.rules)
    n = len(devices)
    accum, length = cfg.train.grad_accum, cfg.data.max_length
    rows = c.per_device_batch * n  # rows per micro-step, all devices
    batch_spec = check_batch(rows, length, rules, mesh)
    global_rows = rows * accum
    attention = resolve_attention(cfg.model.attention, "tpu")
    log(f"compile: {spec.name} = {spec.chips} chips x {c.num_slices} slice(s) ({spec.topology_name}, "
        f"{devices[0].device_kind}), mesh {dict(mesh.shape)}, batch [{accum} x {rows} x {length}] "
        f"= {global_rows} rows/step, attention {attention}, loss_chunk {cfg.train.loss_chunk}")
    if global_rows != cfg.train.global_batch_size:
        log(f"compile: note: per_device_batch x devices x grad_accum = {global_rows} rows, "
            f"train.global_batch_size = {cfg.train.global_batch_size}")

    compiled, abstract, t_lower, t_compile = _compile(cfg, mesh, rules, rows)
    program, params, frozen = abstract.program, abstract.params, abstract.frozen
    state, frozen_abstract, batch, model_cfg = abstract.state, abstract.frozen_state, abstract.batch, abstract.model_cfg
    hbm = spec.hbm_bytes
    memory = memory_of(compiled, hbm)
    fits = memory["total_bytes"] <= hbm

    def leaves_size(tree) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

    trainable = leaves_size(params)
    num_params = trainable + leaves_size(frozen)
    specs, undivided, param_bytes = param_report(program.state_shardings["params"], params, rules, mesh)
    frozen_specs, frozen_undivided, frozen_bytes = param_report(program.frozen_shardings, frozen, rules, mesh)
    specs, undivided, param_bytes = {**specs, **frozen_specs}, undivided + frozen_undivided, param_bytes + frozen_bytes
    state_bytes = tree_bytes_per_device(state) + tree_bytes_per_device(frozen_abstract)
    batch_bytes = tree_bytes_per_device(batch)
    cost = compiled_cost(compiled)
    tokens = global_rows * length
    fpt = flops_per_token(model_cfg, length)
    # XLA's cost analysis counts a while loop's body once, not once per iteration: with scanned
    # layers or gradient accumulation the compiled figure is far below the real work.
    loops = model_cfg.scan_layers or accum > 1
    recompute = 4 / 3 if model_cfg.remat in ("full", "nothing_saveable") else 1.0  # forward runs twice
    kernels = kernels_in(compiled)
    report = {
        "program": "train",
        "topology": {"name": spec.name, "generation": spec.generation, "chips": spec.chips,
                     "num_slices": c.num_slices, "devices": n, "device_kind": devices[0].device_kind,
                     "topology_name": spec.topology_name, "chip_config_name": spec.chip_config_name,
                     "chips_per_host_bounds": list(spec.chips_per_host_bounds), "wrap": list(spec.wrap),
                     "hbm_bytes_per_device": hbm},
        "mesh": {a: int(mesh.shape[a]) for a in mesh.axis_names if a in MESH_AXES or mesh.shape[a] > 1},
        "batch": {"per_device_batch": c.per_device_batch, "grad_accum": accum, "rows_per_micro_step": rows,
                  "global_rows": global_rows, "train_global_batch_size": cfg.train.global_batch_size,
                  "sequence_length": length, "tokens_per_step": tokens, "spec": spec_json(batch_spec)},
        "model": {"family": model_cfg.family, "num_layers": model_cfg.num_layers,
                  "hidden_size": model_cfg.hidden_size, "vocab_size": model_cfg.vocab_size,
                  "params": num_params, "trainable_params": trainable, "lora_rank": cfg.lora.rank,
                  "param_dtype": model_cfg.param_dtype, "dtype": model_cfg.dtype, "remat": model_cfg.remat,
                  "scan_layers": model_cfg.scan_layers},
        "attention": {"configured": cfg.model.attention, "resolved": attention, "kernels": kernels,
                      "splash_in_program": any(k.startswith("splash") for k in kernels)},
        "loss_chunk": cfg.train.loss_chunk,
        "memory_per_device": {
            **memory,
            # from the shardings: what the arguments should hold, before TPU layout padding
            "expected_state_bytes": state_bytes, "expected_param_bytes": param_bytes,
            "expected_batch_bytes": batch_bytes},
        "fits": fits,
        "flops": {"compiled_per_device": cost.get("flops"),
                  "compiled_bytes_accessed_per_device": cost.get("bytes accessed"),
                  "analytic_per_token": fpt, "analytic_per_step": fpt * tokens,
                  "analytic_per_device": fpt * tokens / n,
                  "analytic_with_recompute_per_device": recompute * fpt * tokens / n,
                  "compiled_counts_loop_bodies_once": loops},
        "mfu": mfu_report(fpt * tokens, n, peak_flops_of(devices[0].device_kind, cfg.train.peak_tflops),
                          c.step_time_s),
        "param_shardings": specs,
        "replicated_not_divisible": undivided,
        "seconds": {"lower": round(t_lower, 2), "compile": round(t_compile, 2)},
    }
    if c.find_max_batch:
        report["max_batch"] = _find_max_batch(cfg, mesh, rules, n, hbm, memory["total_bytes"], log)
    return report


def _find_max_batch(cfg: CompileSpec, mesh, rules, n: int, hbm: int, configured_total: int, log) -> dict:
    """The largest per-device batch whose train step fits (`compile.find_max_batch`), by compiling."""
    c = cfg.compile
    totals: dict[int, int | None] = {c.per_device_batch: configured_total}

    def fits(per_device: int) -> bool:
        if per_device in totals:
            return totals[per_device] is not None and totals[per_device] <= hbm
        rows = per_device * n
        try:
            check_batch(rows, cfg.data.max_length, rules, mesh)
            compiled = _compile(cfg, mesh, rules, rows)[0]
        except Exception as e:
            if not out_of_memory(e):
                raise
            totals[per_device] = None  # the compiler itself gave up: far over HBM
            log(f"compile: per_device_batch {per_device}: out of memory at compile time")
            return False
        totals[per_device] = memory_of(compiled, hbm)["total_bytes"]
        log(f"compile: per_device_batch {per_device}: {fmt_gib(totals[per_device])} of {fmt_gib(hbm)}")
        return totals[per_device] <= hbm

    best, tried = search_max_batch(fits, c.per_device_batch, c.max_batch_limit)
    log(f"compile: the largest per_device_batch that fits is {best} (tried {sorted(tried)})")
    return {"per_device_batch": best, "rows_per_micro_step": best * n, "limit": c.max_batch_limit,
            "tried": {str(b): {"fits": ok, "total_bytes": totals.get(b)} for b, ok in sorted(tried.items())}}


def train_summary(report: dict) -> str:
    """The train report as the few lines the stage prints."""
    m, f, t = report["memory_per_device"], report["flops"], report["topology"]
    compiled = f["compiled_per_device"]
    def count(n: int) -> str:
        return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"

    lines = [
        f"compile: {count(report['model']['params'])} params ({count(report['model']['trainable_params'])} "
        f"trainable) on {t['name']} ({t['devices']} devices, mesh {report['mesh']})",
        f"  per device: arguments {fmt_gib(m['argument_bytes'])}, outputs {fmt_gib(m['output_bytes'])}, "
        f"aliased {fmt_gib(m['alias_bytes'])}, temporaries {fmt_gib(m['temp_bytes'])}, "
        f"code {m['generated_code_bytes'] / 2**20:.1f} MiB",
        f"  total {fmt_gib(m['total_bytes'])} of {fmt_gib(m['hbm_bytes'])} HBM "
        f"({100 * m['fraction_of_hbm']:.1f}%): {'fits' if report['fits'] else 'DOES NOT FIT'}",
        f"  FLOPs per step per device: analytic {f['analytic_per_device']:.3e} "
        f"({f['analytic_per_token']:.3e}/token x {report['batch']['tokens_per_step']} tokens / {t['devices']}), "
        f"{f['analytic_with_recompute_per_device']:.3e} with remat recompute",
        (f"  compiler's cost analysis: {compiled:.3e}"
         + (" (XLA counts a loop body once: the scanned layers and accumulation micro-steps are loops,"
            " so this is not the step's total)" if f["compiled_counts_loop_bodies_once"] else ""))
        if compiled else "  the compiler gave no FLOPs",
    ]
    a = report.get("attention")
    if a:
        lines.append(f"  attention: {a['resolved']} (model.attention={a['configured']}); kernels in the program: "
                     f"{', '.join(a['kernels']) or 'none'}; train.loss_chunk={report['loss_chunk']}")
    mfu = report.get("mfu")
    if mfu and mfu["step_time_s_at_full_mfu"]:
        line = (f"  MFU: {mfu['peak_flops_per_device'] / 1e12:.0f} TFLOP/s per device peak, so 100% MFU is "
                f"{mfu['step_time_s_at_full_mfu']:.3f} s/step")
        if mfu["mfu"] is not None:
            line += f"; a {mfu['step_time_s']} s step is {100 * mfu['mfu']:.1f}% MFU"
        lines.append(line + " (compile.step_time_s)")
    if "max_batch" in report:
        mb = report["max_batch"]
        lines.append(f"  largest per_device_batch that fits: {mb['per_device_batch']} "
                     f"(searched up to {mb['limit']}: " + ", ".join(
                         f"{b} {'fits' if r['fits'] else 'no'}" for b, r in mb["tried"].items()) + ")")
    lines.append(f"  lowered in {report['seconds']['lower']} s, compiled in {report['seconds']['compile']} s")
    if report["replicated_not_divisible"]:
        lines.append(f"  replicated (not divisible): {'; '.join(report['replicated_not_divisible'])}")
    return "\n".join(lines)
