"""TPU slices by name (`v5p-64`, `v4-32`, `v6e-8`): chip grids, HBM, and libtpu's compile-only devices
for ahead-of-time compiles on a machine with no TPU. The generations themselves (HBM, slice grids,
libtpu names) come from the hardware catalogue, `jz3_jax.runtime.hardware`."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

from jz3_jax.errors import ConfigError, UserError
from jz3_jax.runtime.hardware import GiB, TPU_ALIASES, TPU_GENERATIONS  # noqa: F401 - GiB re-exported


class TpuCompilerMissing(UserError):
    """libtpu (the TPU compiler) is not installed."""


# --- topologies (the generations' facts are in the hardware catalogue, `jz3_jax.runtime.hardware`) ------

GENERATIONS = TPU_GENERATIONS  # generation name -> Chip (with its `tpu` slice facts)
ALIASES = TPU_ALIASES


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
    for gen_name, chip in GENERATIONS.items():
        names += [f"{gen_name}-{chips * chip.tpu.cores_per_chip_in_name}" for chips in chip.tpu.shapes]
    return names


def parse_topology(name: str) -> TopologySpec:
    """`"v5p-64"` -> TopologySpec(chips=32, topology_name="v5p:2x4x4", ...); ConfigError if unknown."""
    match = re.fullmatch(r"\s*(v\w+?)-(\d+)\s*", name.lower())
    gen_name = match and ALIASES.get(match.group(1), match.group(1))
    chip = GENERATIONS.get(gen_name) if match else None
    gen = chip.tpu if chip else None
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
        chips_per_host_bounds=host, wrap=wrap, hbm_bytes=chip.hbm_bytes)


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
