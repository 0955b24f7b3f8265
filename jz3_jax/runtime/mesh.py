"""Build the device mesh (data, fsdp, tensor; plus expert when `mesh.expert > 1`) from `MeshConfig`."""

from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh

from jz3_jax.errors import ConfigError
from jz3_jax.runtime.config import MeshConfig
from jz3_jax.runtime.sharding import parse_rules


MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Sizes for (data, fsdp, tensor); at most one -1, filled with the devices `mesh.expert` leaves."""
    expert = getattr(cfg, "expert", 1)
    if expert < 1:
        raise ConfigError(f"mesh.expert must be >= 1, got {expert}")
    if num_devices % expert:
        raise ConfigError(f"mesh.expert={expert} does not divide the {num_devices} devices")
    num_devices //= expert
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ConfigError(f"at most one mesh axis may be -1, got data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ConfigError(f"{num_devices} devices do not divide by the fixed mesh axes (product {known})")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
            f"does not match the {num_devices} available devices"
        )
    return tuple(sizes)


def build_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (global) devices, or `devices`, with Auto axis types (GSPMD-style sharding)."""
    devices = list(devices) if devices is not None else jax.devices()
    data, fsdp, tensor = resolve_mesh_shape(cfg, len(devices))
    shape, names = (data, fsdp, tensor), MESH_AXES
    if getattr(cfg, "expert", 1) > 1:  # between fsdp and tensor: tensor stays on the closest chips
        shape, names = (data, fsdp, cfg.expert, tensor), ("data", "fsdp", "expert", "tensor")
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def mesh_and_rules(cfg: MeshConfig) -> tuple[Mesh, dict[str, tuple[str, ...]]]:
    """The (global) training mesh and the parsed logical-axis rules of the `mesh` section."""
    return build_mesh(cfg), parse_rules(cfg.rules)
