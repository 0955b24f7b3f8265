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

The train program is in `compile_train.py`, the decode program in `compile_decode.py`, the
shared analysis in `compile_analysis.py`, the chips in `jz3_jax.runtime.hardware`. Each program
is a plug-in (`CompiledProgram` in `PROGRAMS`): how to compile it into a report, how
to print that report, and what to change when it does not fit. The stage compiles the one
`compile.program` names; a new program (e.g. select's gradient step) is one more entry.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Callable

from jz3_jax.errors import ConfigError, UserError
from jz3_jax.train.compile_analysis import (check_batch, fmt_gib, mfu_report, peak_flops_of,  # noqa: F401
                                            search_max_batch)  # re-exported
from jz3_jax.train.compile_decode import compile_decode_step, decode_summary
from jz3_jax.train.compile_select import compile_select_step, select_summary
from jz3_jax.train.compile_train import (AbstractTrainStep, abstract_train_step, compile_train_step,  # noqa: F401
                                         topology_mesh, train_summary)
from jz3_jax.train.tpu_topology import TpuCompilerMissing, parse_topology, tpu_devices  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from jz3_jax.train.spec import CompileSpec


class DoesNotFit(UserError):
    """The compiled program needs more memory per device than the chip has (exit code 2)."""


@dataclasses.dataclass(frozen=True)
class CompiledProgram:
    """One program the stage can compile ahead of time (`compile.program`)."""

    compile: Callable[..., dict]  # (cfg, log) -> the report, with "program", "fits", "memory_per_device", "topology"
    summary: Callable[[dict], str]  # the report as the lines the stage prints
    advice: str  # what to change when it does not fit


PROGRAMS: dict[str, CompiledProgram] = {
    "train": CompiledProgram(
        compile_train_step, train_summary,
        "lower compile.per_device_batch, raise train.grad_accum, set train.loss_chunk, use more chips or "
        "model.remat=full"),
    "decode": CompiledProgram(
        compile_decode_step, decode_summary,
        "lower engine.max_batch or engine.max_seq_len, use bfloat16 weights (model.param_dtype) or a larger slice"),
    "select": CompiledProgram(
        compile_select_step, select_summary,
        "lower compile.per_device_batch or data.max_length, set train.loss_chunk, model.remat=full or use more chips"),
}


def summary(report: dict) -> str:
    """The report as the few lines the stage prints (by its program's plug-in)."""
    return PROGRAMS[report.get("program", "train")].summary(report)


def run(cfg: CompileSpec, ctx) -> None:
    """The `compile` stage: print the per-device report, write `compile.json`, fail if it does not fit."""
    program = cfg.compile.program
    if program not in PROGRAMS:
        raise ConfigError(f"compile.program must be one of {', '.join(PROGRAMS)}, got {program!r}")
    plugin = PROGRAMS[program]
    report = plugin.compile(cfg, log=ctx.logger.info)
    text = plugin.summary(report)
    print(text, flush=True)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    (ctx.stage_dir / "compile.json").write_text(json.dumps(report, indent=2) + "\n")
    if not report["fits"]:
        m = report["memory_per_device"]
        raise DoesNotFit(f"the {program} step needs {fmt_gib(m['total_bytes'])} per device but a "
                         f"{report['topology']['name']} chip has {fmt_gib(m['hbm_bytes'])}: {plugin.advice} "
                         f"(report in {ctx.stage_dir / 'compile.json'})")
