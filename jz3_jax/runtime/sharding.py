"""Logical axis names -> mesh axes, through one rules table (`mesh.rules`).

Parameters and activations are annotated with logical names such as ("embed", "mlp"); the table
says which mesh axes each name is split over. A dimension whose size the mesh axes do not divide
stays replicated (uneven splits crash some backends).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jz3_jax.errors import ConfigError

Rules = Mapping[str, tuple[str, ...]]
# Mesh axes a rule may name although the mesh leaves them out (a mesh has `expert` only when
# mesh.expert > 1): an absent optional axis counts as size 1.
OPTIONAL_AXES = ("expert",)
LogicalAxes = Sequence[str | None]


def parse_rules(rules: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`["batch=data+fsdp", "length="]` -> `{"batch": ("data", "fsdp"), "length": ()}`."""
    table = {}
    for rule in rules:
        if "=" not in rule:
            raise ConfigError(f"mesh rule {rule!r} is not of the form logical=axis+axis")
        name, axes = rule.split("=", 1)
        table[name.strip()] = tuple(a.strip() for a in axes.split("+") if a.strip())
    return table


def logical_to_spec(
    names: LogicalAxes, rules: Rules, mesh: Mesh, shape: Sequence[int] | None = None
) -> PartitionSpec:
    """The PartitionSpec for one array annotated with `names` (None = replicated dimension).

    A mesh axis is used at most once per array (first dimension wins); with `shape`, a dimension
    the mesh axes do not divide evenly is left replicated.
    """
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ConfigError(f"logical axis {name!r} has no entry in mesh.rules ({sorted(rules)})")
        axes = tuple(a for a in rules[name] if a not in used and mesh.shape.get(a, 1) > 1)
        for a in rules[name]:
            if a not in mesh.shape and a not in OPTIONAL_AXES:
                raise ConfigError(f"mesh.rules maps {name!r} to unknown mesh axis {a!r}")
        size = math.prod(mesh.shape[a] for a in axes)  # only axes present (size > 1)
        if not axes or (shape is not None and shape[dim] % size):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def named_sharding(names: LogicalAxes, rules: Rules, mesh: Mesh, shape: Sequence[int] | None = None) -> NamedSharding:
    """NamedSharding for one array annotated with logical `names`."""
    return NamedSharding(mesh, logical_to_spec(names, rules, mesh, shape))


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: Any, rules: Rules, mesh: Mesh) -> Any:
    """NamedShardings for an NNX state (or abstract state) whose Variables carry `logical_axes` metadata.

    Variables without the annotation are replicated. A stacked (scanned) layer parameter has
    one more dimension than its annotation: that leading dimension is the "layers" axis.
    """

    def one(var: Any) -> Any:
        if not _is_variable(var):
            return NamedSharding(mesh, PartitionSpec())
        shape = var.get_value().shape
        names = tuple(var.get_metadata().get("logical_axes") or (None,) * len(shape))
        if len(names) == len(shape) - 1:
            names = ("layers",) + names
        return var.replace(named_sharding(names, rules, mesh, shape))

    return jax.tree.map(one, state, is_leaf=_is_variable)
