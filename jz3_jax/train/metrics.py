"""Per-step metrics: `metrics.jsonl` (plottable) and TensorBoard event files, written by process 0."""

from __future__ import annotations

import json

import jax

from jz3_jax.runtime.hardware import peak_flops
from jz3_jax.runtime.paths import as_path, is_local, local_mirror


def peak_flops_per_device(override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device for MFU: `override_tflops` (config `train.peak_tflops`) when set,
    else the chip's in the hardware catalogue (`jz3_jax.runtime.hardware`), else None (MFU is
    then not reported)."""
    return peak_flops(jax.devices()[0].device_kind, override_tflops)


class MetricsWriter:
    """Appends one JSON object per logged step; on resume, drops lines past the restored step.

    A local file is appended to; an object (gs://) cannot be, so a remote one is rewritten whole
    at each write (a few hundred short lines for a long run). TensorBoard events go beside it, or
    into the local mirror of a remote stage directory.
    """

    def __init__(self, stage_dir, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = as_path(stage_dir) / "metrics.jsonl"
        self.tb = None
        self.lines: list[str] = []
        if not enabled:
            return
        if self.path.exists():  # a killed run may have logged steps after its last checkpoint
            self.lines = [line for line in self.path.read_text().splitlines()
                          if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in self.lines))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(local_mirror(as_path(stage_dir)) / "tensorboard"))

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: (float(v) if v is not None else None) for k, v in values.items()}}
        line = json.dumps(record)
        self.lines.append(line)
        if is_local(self.path):
            with self.path.open("a") as f:
                f.write(line + "\n")
        else:
            self.path.write_text("".join(text + "\n" for text in self.lines))
        for key, value in values.items():
            if value is not None:
                self.tb.add_scalar(key, float(value), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
