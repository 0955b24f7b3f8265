"""The one hardware catalogue: accelerator chips by name, with what the rest of the code needs.

Per chip: the `device_kind` prefixes JAX reports for it, peak dense bf16 FLOP/s (for MFU: the
trainer's metrics, the compile stage, the benchmarks), HBM per chip, and for TPUs the facts the
compile stage needs to describe a slice to libtpu (`train/tpu_topology.py`). Nothing here imports
JAX, so the launcher can read it cheaply.
"""

from __future__ import annotations

import dataclasses

GiB = 1024**3

# 3D generations (v4, v5p): slices smaller than a 4x4x4 cube are open on every axis; from 64 chips
# on, every dimension is a multiple of 4 and the slice has wrap-around links (a torus).
CUBES = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
         256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
# 2D generations (v5e, v6e): up to a 16x16 pod; a dimension of 16 wraps around.
GRIDS = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True, eq=False)
class TpuSlices:
    """How libtpu names and lays out slices of one TPU generation."""

    prefix: str  # the generation in libtpu's topology names ("v5p:2x4x4")
    cores_per_chip_in_name: int  # v4/v5p names count TensorCores (2 per chip), v5e/v6e count chips
    chip_config_name: str  # "megacore": one device per chip (both TensorCores); "default" otherwise
    shapes: dict[int, tuple[int, ...]]  # chips -> chip grid of the slice


@dataclasses.dataclass(frozen=True, eq=False)
class Chip:
    """One accelerator chip (one JAX device)."""

    name: str  # short name: "v5p", "H100"
    device_kinds: tuple[str, ...]  # prefixes of `jax.Device.device_kind` that mean this chip
    peak_bf16_flops: float  # dense bf16 FLOP/s
    hbm_bytes: int | None  # memory per chip (None where the kind comes in several sizes)
    tpu: TpuSlices | None = None  # TPU generations only


CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("v4", ("TPU v4",), 275e12, 32 * GiB, TpuSlices("v4", 2, "megacore", CUBES)),
    Chip("v5p", ("TPU v5p", "TPU v5"), 459e12, 95 * GiB, TpuSlices("v5p", 2, "megacore", CUBES)),
    Chip("v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GiB, TpuSlices("v5e", 1, "default", GRIDS)),
    Chip("v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GiB, TpuSlices("v6e", 1, "default", GRIDS)),
    Chip("H100", ("NVIDIA H100",), 989e12, 80 * 10**9),
    Chip("H200", ("NVIDIA H200",), 989e12, 141 * 10**9),
    Chip("A100", ("NVIDIA A100",), 312e12, None),  # 40 GB and 80 GB parts
)}

TPU_GENERATIONS: dict[str, Chip] = {name: chip for name, chip in CHIPS.items() if chip.tpu is not None}
TPU_ALIASES = {"v5litepod": "v5e"}  # Cloud TPU's API name for v5e slices


def chip_of(device_kind: str) -> Chip | None:
    """The chip whose longest `device_kinds` prefix starts `device_kind` ("TPU v5 lite" is v5e,
    "TPU v5" v5p), or None (a CPU, an unknown accelerator)."""
    best, length = None, -1
    for chip in CHIPS.values():
        for prefix in chip.device_kinds:
            if device_kind.startswith(prefix) and len(prefix) > length:
                best, length = chip, len(prefix)
    return best


def peak_flops(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """Peak dense bf16 FLOP/s of one device of `device_kind`: `override_tflops` (config
    `train.peak_tflops`) when set, else the catalogue's, else None (no MFU is reported)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    chip = chip_of(device_kind)
    return None if chip is None else chip.peak_bf16_flops
