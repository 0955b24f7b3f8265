"""What a compiled program needs and does: per-device memory, parameter shardings, FLOPs, kernels,
MFU, and the largest batch that fits."""

from __future__ import annotations

import math
import re
from typing import Any

from jz3_jax.errors import ConfigError
from jz3_jax.runtime.hardware import GiB, peak_flops


def spec_json(spec) -> list:
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
        specs[key] = spec_json(spec)
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


def compiled_cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def fmt_gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"



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


def out_of_memory(error: Exception) -> bool:
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


peak_flops_of = peak_flops  # the hardware catalogue's (`jz3_jax.runtime.hardware`)


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
