"""`compile` stage: ahead-of-time compile of the real train step for a Cloud TPU topology.

Runs on a CPU-only machine with `libtpu` installed (the `tpu` extra): libtpu describes the TPU
slice named by `compile.topology` (e.g. `v5p-64`) as compile-only devices, the stage builds the
mesh over them, creates the model and optimizer state abstractly (shapes only, nothing
allocated, no weights read), lowers the same `train_step` the trainer runs and lets the TPU
compiler compile it. It reports what the compiler says one device needs (arguments, outputs,
temporaries) against the chip's HBM, the step's FLOPs, the parameter shardings, and fails with
`DoesNotFit` (launcher exit code 2) when the step would not fit.

Run it with `JAX_PLATFORMS=cpu` so everything else stays on the host CPU:
    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/pretrain_mistral7b.py

Topology names follow Cloud TPU: v4 and v5p names count TensorCores (2 per chip, so v5p-64 is 32
chips in a 2x4x4 cube), v5e (alias v5litepod) and v6e names count chips (v5e-16 is 4x4).

`compile.find_max_batch=true` also searches, by compiling, the largest `per_device_batch` that
fits; `compile.step_time_s` turns the step's model FLOPs into the MFU that step time would mean;
`compile.program=decode` compiles the decoding engine's step instead (`compile_decode.py`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any

from jz3_jax.errors import ConfigError, UserError

if TYPE_CHECKING:
    from jz3_jax.config import Config

GiB = 1024**3


class DoesNotFit(UserError):
    """The compiled train step needs more memory per device than the chip has (exit code 2)."""


class TpuCompilerMissing(UserError):
    """libtpu (the TPU compiler) is not installed."""


# --- topologies --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Generation:
    prefix: str  # the generation in libtpu's topology names ("v5p:2x4x4")
    cores_per_chip_in_name: int  # v4/v5p names count TensorCores (2 per chip), v5e/v6e count chips
    chip_config_name: str  # "megacore": one device per chip (both TensorCores); "default" otherwise
    hbm_bytes: int
    shapes: dict[int, tuple[int, ...]]  # chips -> chip grid of the slice


# 3D generations (v4, v5p): slices smaller than a 4x4x4 cube are open on every axis; from 64 chips
# on, every dimension is a multiple of 4 and the slice has wrap-around links (a torus).
_CUBES = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
          256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
# 2D generations (v5e, v6e): up to a 16x16 pod; a dimension of 16 wraps around.
_GRIDS = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}

GENERATIONS = {
    "v4": Generation("v4", 2, "megacore", 32 * GiB, _CUBES),
    "v5p": Generation("v5p", 2, "megacore", 95 * GiB, _CUBES),
    "v5e": Generation("v5e", 1, "default", 16 * GiB, _GRIDS),
    "v6e": Generation("v6e", 1, "default", 32 * GiB, _GRIDS),
}
ALIASES = {"v5litepod": "v5e"}  # Cloud TPU's API name for v5e slices


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    """A Cloud TPU slice name resolved to the arguments of `get_topology_desc`."""

    name: str  # canonical, e.g. "v5p-64"
    generation: str
    chips: int
    topology_name: str  # e.g. "v5p:2x4x4"
    chip_config_name: str
    chips_per_host_bounds: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]
    hbm_bytes: int


def supported_topologies() -> list[str]:
    names = []
    for gen_name, gen in GENERATIONS.items():
        names += [f"{gen_name}-{chips * gen.cores_per_chip_in_name}" for chips in gen.shapes]
    return names


def parse_topology(name: str) -> TopologySpec:
    """`"v5p-64"` -> TopologySpec(chips=32, topology_name="v5p:2x4x4", ...); ConfigError if unknown."""
    match = re.fullmatch(r"\s*(v\w+?)-(\d+)\s*", name.lower())
    gen_name = match and ALIASES.get(match.group(1), match.group(1))
    gen = GENERATIONS.get(gen_name) if match else None
    count = int(match.group(2)) if match else 0
    chips, rest = divmod(count, gen.cores_per_chip_in_name) if gen else (0, 1)
    if gen is None or rest or chips not in gen.shapes:
        raise ConfigError(f"compile.topology={name!r} is not a supported TPU slice; supported: "
                          f"{', '.join(supported_topologies())} (v5litepod-N = v5e-N)")
    shape = gen.shapes[chips]
    if len(shape) == 3:
        wrap = (chips >= 64,) * 3
    else:
        wrap = (shape[0] == 16, shape[1] == 16, False)
    # v4/v5p hosts hold 4 chips; a v5e/v6e 8-chip slice is one 8-chip host (larger ones use 4-chip hosts)
    host = (1, 1, 1) if chips == 1 else (2, 4, 1) if len(shape) == 2 and chips == 8 else (2, 2, 1)
    return TopologySpec(
        name=f"{gen_name}-{count}", generation=gen_name, chips=chips,
        topology_name=f"{gen.prefix}:{'x'.join(map(str, shape))}", chip_config_name=gen.chip_config_name,
        chips_per_host_bounds=host, wrap=wrap, hbm_bytes=gen.hbm_bytes)


def tpu_devices(spec: TopologySpec, num_slices: int = 1) -> list:
    """Compile-only TPU devices of the slice(s) described by libtpu (no TPU needed)."""
    if importlib.util.find_spec("libtpu") is None:
        import jax

        raise TpuCompilerMissing(
            "the compile stage needs libtpu (the TPU compiler); install the tpu extra: "
            f"pip install 'jax[tpu]=={jax.__version__}' (or pip install -e '.[tpu]')")
    if num_slices < 1:
        raise ConfigError(f"compile.num_slices must be >= 1, got {num_slices}")
    from jax.experimental import topologies

    # libtpu takes a machine-wide lock file by default, so a second compile (another run, a test) would
    # fail while one runs; compile-only devices touch no TPU, so several processes may load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        topology = topologies.get_topology_desc(
            platform="tpu", topology_name=spec.topology_name, chip_config_name=spec.chip_config_name,
            chips_per_host_bounds=spec.chips_per_host_bounds, num_slices=num_slices, wrap=spec.wrap)
    except Exception as e:  # libtpu rejects the description (e.g. an older libtpu without this generation)
        raise ConfigError(f"libtpu cannot describe {spec.name} ({spec.topology_name}, {spec.chip_config_name}, "
                          f"{num_slices} slice(s)): {e}") from e
    devices = list(topology.devices)
    if len(devices) != spec.chips * num_slices:
        raise ConfigError(f"libtpu describes {spec.topology_name} x {num_slices} slice(s) as {len(devices)} "
                          f"devices, expected {spec.chips * num_slices}")
    return devices


def topology_mesh(cfg: Config, devices: list, num_slices: int):
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


def _spec_json(spec) -> list:
    return [list(s) if isinstance(s, tuple) else s for s in spec]


def _axes_size(entry, mesh) -> int:
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[a] for a in names)


def check_batch(rows: int, length: int, rules, mesh) -> Any:
    """The batch PartitionSpec; ConfigError when a dimension the rules shard does not divide."""
    from jz3_jax.runtime.sharding import logical_to_spec

    for name, size in (("batch", rows), ("length", length)):
        axes = [a for a in rules.get(name, ()) if mesh.shape.get(a, 1) > 1]
        shards = math.prod(mesh.shape[a] for a in axes)
        if size % shards:
            raise ConfigError(
                f"the {name} dimension ({size}) does not divide its mesh axes {'x'.join(axes)} ({shards} shards): "
                f"{'rows = compile.per_device_batch x devices' if name == 'batch' else 'data.max_length'} "
                f"must be a multiple of {shards}")
    return logical_to_spec((None, "batch", "length"), rules, mesh, (1, rows, length))


def param_report(params_shardings, params_abstract, rules, mesh) -> tuple[dict, list, int]:
    """({path: spec}, [dims left replicated because the axes do not divide], bytes per device)."""
    from flax import nnx

    specs, undivided, per_device = {}, [], 0
    flat_sh = dict(nnx.to_flat_state(params_shardings))
    for path, var in nnx.to_flat_state(params_abstract):
        key = ".".join(map(str, path))
        sharding = flat_sh[path].get_value()
        value = var.get_value()
        spec = tuple(sharding.spec) + (None,) * (len(value.shape) - len(sharding.spec))
        specs[key] = _spec_json(spec)
        shards = math.prod(_axes_size(s, mesh) for s in spec)
        per_device += math.prod(value.shape) * value.dtype.itemsize // shards
        names = tuple(var.get_metadata().get("logical_axes") or ())
        if len(names) == len(value.shape) - 1:
            names = ("layers",) + names
        for dim, (name, s) in enumerate(zip(names, spec)):
            wanted = [a for a in rules.get(name, ()) if mesh.shape.get(a, 1) > 1] if name else []
            if wanted and s is None:
                undivided.append(f"{key} dim {dim} ({name}={value.shape[dim]}) not divisible by "
                                 f"{'x'.join(wanted)}: replicated")
    return specs, undivided, per_device


def tree_bytes_per_device(tree) -> int:
    """Bytes one device holds of a pytree of ShapeDtypeStructs with NamedShardings."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * leaf.dtype.itemsize
    return total


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _fmt_gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


# --- the stage ---------------------------------------------------------------------------------


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


def abstract_train_step(cfg: Config, mesh, rules, rows: int) -> AbstractTrainStep:
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


def memory_of(compiled, hbm: int) -> dict:
    """What the compiler says one device needs for `compiled` (bytes), against `hbm`."""
    mem = compiled.memory_analysis()
    argument, output = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp, code = mem.alias_size_in_bytes, mem.temp_size_in_bytes, mem.generated_code_size_in_bytes
    # Outputs that alias (donated) arguments share their buffers, so they count once.
    total = argument + output - alias + temp + code
    return {"argument_bytes": argument, "output_bytes": output, "alias_bytes": alias, "temp_bytes": temp,
            "generated_code_bytes": code, "total_bytes": total, "hbm_bytes": hbm, "fraction_of_hbm": total / hbm,
            "host_temp_bytes": getattr(mem, "host_temp_size_in_bytes", 0)}


def _out_of_memory(error: Exception) -> bool:
    """Whether a compile failed because the program does not fit in HBM (not a bug)."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "exceeds the memory" in text


def kernels_in(compiled) -> list[str]:
    """Names of the Pallas (Mosaic) kernels the compiled TPU program calls, e.g. the splash kernels."""
    text = compiled.as_text()
    names = set()
    for line in text.splitlines():
        if 'custom_call_target="tpu_custom_call"' in line:
            match = re.search(r"%([\w-]+?)(?:\.\d+)? = ", line)
            names.add(match.group(1) if match else "tpu_custom_call")
    return sorted(names)


def peak_flops_of(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """Peak dense bf16 FLOP/s of one device of `device_kind` (`train.peak_tflops` when set)."""
    from jz3_jax.train.metrics import PEAK_FLOPS

    if override_tflops > 0:
        return override_tflops * 1e12
    for name, flops in PEAK_FLOPS.items():
        if device_kind.startswith(name):
            return flops
    return None


def mfu_report(flops_per_step: float, devices: int, peak: float | None, step_time_s: float) -> dict:
    """The step time that 100% model-FLOPs utilisation would mean, and the MFU of `step_time_s`."""
    if step_time_s < 0:
        raise ConfigError(f"compile.step_time_s must be >= 0, got {step_time_s}")
    full = flops_per_step / (devices * peak) if peak else None
    return {"peak_flops_per_device": peak, "step_time_s_at_full_mfu": full,
            "step_time_s": step_time_s or None,
            "mfu": full / step_time_s if full and step_time_s > 0 else None}


def search_max_batch(fits, start: int, limit: int) -> tuple[int, dict[int, bool]]:
    """The largest batch b <= `limit` with `fits(b)` (0 if none), assuming fitting is monotone: double
    from `start` while it fits (halve while it does not), then bisect. Returns (b, {tried: fits})."""
    tried: dict[int, bool] = {}

    def ok(b: int) -> bool:
        if b not in tried:
            tried[b] = fits(b)
        return tried[b]

    start = max(1, min(start, limit))
    if ok(start):
        lo, hi = start, None
        while hi is None and lo < limit:
            b = min(2 * lo, limit)
            lo, hi = (b, None) if ok(b) else (lo, b)
        if hi is None:
            return lo, tried
    else:
        hi, lo = start, start // 2
        while lo >= 1 and not ok(lo):
            hi, lo = lo, lo // 2
        if lo < 1:
            return 0, tried
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo, tried


def _compile(cfg: Config, mesh, rules, rows: int):
    """(compiled train step, AbstractTrainStep, lower seconds, compile seconds) for `rows` per micro-step."""
    t0 = time.perf_counter()
    abstract = abstract_train_step(cfg, mesh, rules, rows)
    lowered = abstract.program.lower_train_step(abstract.state, abstract.frozen_state, abstract.batch)
    t_lower = time.perf_counter() - t0
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, abstract, t_lower, time.perf_counter() - t1


def compile_train_step(cfg: Config, log=print) -> dict:
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
    cost = _cost(compiled)
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
                  "sequence_length": length, "tokens_per_step": tokens, "spec": _spec_json(batch_spec)},
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


def _find_max_batch(cfg: Config, mesh, rules, n: int, hbm: int, configured_total: int, log) -> dict:
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
            if not _out_of_memory(e):
                raise
            totals[per_device] = None  # the compiler itself gave up: far over HBM
            log(f"compile: per_device_batch {per_device}: out of memory at compile time")
            return False
        totals[per_device] = memory_of(compiled, hbm)["total_bytes"]
        log(f"compile: per_device_batch {per_device}: {_fmt_gib(totals[per_device])} of {_fmt_gib(hbm)}")
        return totals[per_device] <= hbm

    best, tried = search_max_batch(fits, c.per_device_batch, c.max_batch_limit)
    log(f"compile: the largest per_device_batch that fits is {best} (tried {sorted(tried)})")
    return {"per_device_batch": best, "rows_per_micro_step": best * n, "limit": c.max_batch_limit,
            "tried": {str(b): {"fits": ok, "total_bytes": totals.get(b)} for b, ok in sorted(tried.items())}}


def summary(report: dict) -> str:
    """The report as the few lines the stage prints."""
    if report.get("program") == "decode":
        from jz3_jax.train.compile_decode import decode_summary

        return decode_summary(report)
    m, f, t = report["memory_per_device"], report["flops"], report["topology"]
    compiled = f["compiled_per_device"]
    def count(n: int) -> str:
        return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"

    lines = [
        f"compile: {count(report['model']['params'])} params ({count(report['model']['trainable_params'])} "
        f"trainable) on {t['name']} ({t['devices']} devices, mesh {report['mesh']})",
        f"  per device: arguments {_fmt_gib(m['argument_bytes'])}, outputs {_fmt_gib(m['output_bytes'])}, "
        f"aliased {_fmt_gib(m['alias_bytes'])}, temporaries {_fmt_gib(m['temp_bytes'])}, "
        f"code {m['generated_code_bytes'] / 2**20:.1f} MiB",
        f"  total {_fmt_gib(m['total_bytes'])} of {_fmt_gib(m['hbm_bytes'])} HBM "
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


PROGRAMS = ("train", "decode")


def run(cfg: Config, ctx) -> None:
    """The `compile` stage: print the per-device report, write `compile.json`, fail if it does not fit."""
    program = cfg.compile.program
    if program not in PROGRAMS:
        raise ConfigError(f"compile.program must be one of {', '.join(PROGRAMS)}, got {program!r}")
    if program == "decode":
        from jz3_jax.train.compile_decode import compile_decode_step

        report = compile_decode_step(cfg, log=ctx.logger.info)
    else:
        report = compile_train_step(cfg, log=ctx.logger.info)
    text = summary(report)
    print(text, flush=True)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    (ctx.stage_dir / "compile.json").write_text(json.dumps(report, indent=2) + "\n")
    if not report["fits"]:
        m = report["memory_per_device"]
        advice = ("lower engine.max_batch or engine.max_seq_len, use bfloat16 weights (model.param_dtype) or a "
                  "larger slice" if program == "decode" else
                  "lower compile.per_device_batch, raise train.grad_accum, set train.loss_chunk, use more chips "
                  "or model.remat=full")
        raise DoesNotFit(f"the {program} step needs {_fmt_gib(m['total_bytes'])} per device but a "
                         f"{report['topology']['name']} chip has {_fmt_gib(m['hbm_bytes'])}: {advice} "
                         f"(report in {ctx.stage_dir / 'compile.json'})")
